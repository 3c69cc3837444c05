"""One-attribute changes of a scenes-world prompt: the hard negatives of the learned preference reward and the pairs
its ranking is measured on (issue 28). `perturb(entry, kind, rng)` returns the metadata of a prompt that differs from
`entry` in exactly one thing, with its caption in the world's grammar (`diffrl.envs.scenes.caption`):

- color: one clause's color becomes a color no other clause names;
- size: one clause's size flips (small <-> large);
- count: the count of a counting prompt moves by one (within 2-6);
- relation: the relation of a position prompt becomes another one (left of / right of / above / below);
- shape: one clause's shape becomes a shape the prompt does not name;
- binding: two clauses swap their colors (or sizes): the same words, bound to other objects.

As in PickScore's and GenEval's hard-negative evaluations, a perturbation keeps everything else of the prompt, so a
reward that ranks the true image above the perturbed prompt's image must read that one attribute.
"""

from __future__ import annotations

import copy

import numpy as np

from diffrl.envs.scenes import COLORS, COUNTS, RELATIONS, SHAPES, SIZES, caption, counting_entry

KINDS = ("color", "size", "count", "relation", "shape", "binding")


def applicable(entry: dict) -> list[str]:
    """The perturbation kinds that change `entry` (e.g. count only for counting prompts), in KINDS order."""
    include = entry["include"]
    kinds = []
    if any("color" in c for c in include):
        kinds.append("color")
    if any("size" in c for c in include):
        kinds.append("size")
    if entry["tag"] == "counting":
        kinds.append("count")
    if entry["tag"] == "position":
        kinds.append("relation")
    if len({c["class"] for c in include}) < len(SHAPES):
        kinds.append("shape")
    if any(len({c.get(key) for c in include}) > 1 and all(key in c for c in include) for key in ("color", "size")):
        kinds.append("binding")
    return kinds


def perturb(entry: dict, kind: str, rng: np.random.Generator) -> dict:
    """A prompt differing from `entry` in one `kind` of attribute (see the module docstring); raises ValueError
    naming the kind when it does not apply to this prompt."""
    if kind not in applicable(entry):
        raise ValueError(f"perturbation {kind!r} does not apply to {entry['prompt']!r}; it takes {applicable(entry)}")
    include = copy.deepcopy(entry["include"])
    tag = entry["tag"]

    def pick(options):
        return options[int(rng.integers(len(options)))]

    if kind == "count":
        n, shape = include[0]["count"], include[0]["class"]
        return counting_entry(shape, pick([m for m in (n - 1, n + 1) if m in COUNTS]))
    if kind == "color":
        clause = pick([c for c in include if "color" in c])
        clause["color"] = pick([c for c in COLORS if c not in {x.get("color") for x in include}])
    elif kind == "size":
        clause = pick([c for c in include if "size" in c])
        clause["size"] = pick([s for s in SIZES if s != clause["size"]])
    elif kind == "relation":
        subject = include[1]
        subject["position"] = [pick([r for r in RELATIONS if r != subject["position"][0]]), subject["position"][1]]
    elif kind == "shape":
        if tag == "counting":
            return counting_entry(pick([s for s in SHAPES if s != include[0]["class"]]), include[0]["count"])
        clause = pick(include)
        clause["class"] = pick([s for s in SHAPES if s not in {x["class"] for x in include}])
    else:  # binding: swap the colors (or sizes) of two clauses whose values differ
        key = "color" if all("color" in c for c in include) and len({c["color"] for c in include}) > 1 else "size"
        first = pick(list(range(len(include))))
        second = pick([i for i in range(len(include)) if include[i][key] != include[first][key]])
        include[first][key], include[second][key] = include[second][key], include[first][key]
    changed = {"tag": tag, "include": include}
    if "exclude" in entry:
        changed["exclude"] = copy.deepcopy(entry["exclude"])
    return {**changed, "prompt": caption(changed)}
