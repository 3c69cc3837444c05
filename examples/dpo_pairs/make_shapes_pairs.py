"""Write an offline preference-pairs file for Diffusion-DPO on the shapes world (learner.diffusion_dpo.pairs).

Per pair: a training prompt (never a held-out one), "chosen" a ground-truth render of it (the world's own renderer,
so the image satisfies the prompt), "rejected" a render of another training prompt of the same task type (a near
miss: right kind of scene, wrong objects, counts, colours or positions). The shipped examples/dpo_pairs/pairs.jsonl
is this script's output with its defaults; your own pairs file has the same format (see diffrl.kinds.rl.pairs).

Usage: python examples/dpo_pairs/make_shapes_pairs.py [--out DIR] [--pairs 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffrl.envs.worlds import world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="writes pairs.jsonl and images/")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shapes = world("shapes")
    train, _ = shapes.prompt_splits(heldout_fraction=0.25, seed=0)  # the RL job's default split
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(args.pairs):
        entry = train[index % len(train)]
        others = [e for e in train if e["tag"] == entry["tag"] and e["prompt"] != entry["prompt"]]
        other = others[rng.integers(len(others))] if others else train[(index + 1) % len(train)]
        names = {}
        for key, metadata in (("chosen", entry), ("rejected", other)):
            names[key] = f"images/{index:04d}_{key}.png"
            Image.fromarray(shapes.render_prompt(metadata, rng)).save(out / names[key])
        lines.append(json.dumps({**entry, **names}))
    (out / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{out / 'pairs.jsonl'}: {args.pairs} pairs")


if __name__ == "__main__":
    main()
