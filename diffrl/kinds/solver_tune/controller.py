"""The solver-tuning controller: sample the reference once, then for every NFE budget and candidate make its grid
(searching it on the rollout workers when data-driven), sample the held-out prompts from the eval seeds, score
them on the reward workers and measure their distance to the reference; write the chosen schedule per NFE and the
report's figure."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from diffrl.kinds.rl.data import prompt_splits
from diffrl.kinds.rl.roles import reward_role
from diffrl.kinds.rollouts import eval_metrics, eval_requests, generate_and_score, write_grid
from diffrl.kinds.solver_tune.config import CandidateConfig, SolverTuneJobConfig
from diffrl.kinds.solver_tune.grids import candidate_grid
from diffrl.kinds.solver_tune.report import write_tune_figure
from diffrl.platform.report_html import refresh_report
from diffrl.platform.runtime import RunContext
from diffrl.platform.worker import WorkerGroup
from diffrl.utils.atomic import atomic_write_text
from diffrl.utils.rng import Stream, stream_seed
from diffrl.workers.batch import RolloutBatch, SampleRequest
from diffrl.workers.schedule import Schedule, write_schedule


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, run_dir, log = ctx.cfg, ctx.run_dir, ctx.log
    rollout = ctx.roles["rollout"]
    rewards = [ctx.roles[reward_role(i)] for i in range(len(cfg.reward.rewards))]
    train_prompts, heldout = prompt_splits(cfg)
    scoring = eval_requests(heldout, cfg.tune.seeds_per_prompt)
    reference_steps = cfg.tune.reference_steps
    reference = generate_and_score(rollout, rewards, scoring, sampler="ode", num_steps=reference_steps)
    tuning = tuning_requests(cfg, train_prompts)
    tuning_reference = RolloutBatch.concat(rollout.map("generate", tuning, sampler="ode",
                                                       num_steps=reference_steps)).samples
    rows = [result_row(cfg, reference, reference, "reference", reference_steps)]
    log.write({"step": 0, **numeric(rows[-1])})

    chosen: dict[int, dict] = {}
    chosen_batch: dict[int, RolloutBatch] = {}
    pairs = [(nfe, candidate) for nfe in cfg.tune.nfes for candidate in cfg.tune.candidates]
    bar = tqdm(pairs, desc="solver_tune", unit="candidate", dynamic_ncols=True)
    for step, (nfe, candidate) in enumerate(bar, start=1):
        bar.set_postfix(nfe=nfe, candidate=candidate.name)

        def distance(grid: torch.Tensor) -> float:
            samples = sample_on(rollout, tuning, candidate, grid)
            return mean_squared_distance(samples, tuning_reference)

        grid, search = candidate_grid(candidate, nfe, cfg.tune, distance)
        batch = generate_and_score(rollout, rewards, on_grid(scoring, grid), sampler=candidate.solver,
                                   solver_options=candidate.options())
        row = {**result_row(cfg, batch, reference, candidate.name, nfe), **search, "grid": grid.tolist(),
               "solver": candidate.solver, "options": candidate.options()}
        rows.append(row)
        log.write({"step": step, **numeric(row)})
        best = chosen.get(nfe)
        if best is None or better(row, best, cfg.tune.select):
            chosen[nfe], chosen_batch[nfe] = row, batch
    bar.close()
    cheapest = min(chosen)
    write_grid(chosen_batch[cheapest], run_dir, "after", len(pairs), f"chosen schedule at NFE {cheapest}: "
               f"{chosen[cheapest]['candidate']} ({cfg.trainer.eval_label} {chosen[cheapest]['reward']:.3f})",
               cfg.tune.seeds_per_prompt, cfg.trainer.sample_grid_prompts)

    schedules = {}
    for nfe, row in sorted(chosen.items()):
        schedule = Schedule(row["solver"], row["options"], tuple(row["grid"]), cfg.model.path or cfg.model.name,
                            {"reward": row["reward"], "distance": row["distance"],
                             "reference_reward": rows[0]["reward"]})
        schedules[nfe] = str(write_schedule(run_dir / "schedules" / f"nfe{nfe}.json", schedule))
        ctx.echo(f"NFE {nfe}: {row['candidate']} (reward {row['reward']:.3f}, distance {row['distance']:.4f}) "
                 f"-> {schedules[nfe]}")
    atomic_write_text(run_dir / "results.json", json.dumps(rows, indent=1))
    write_tune_figure(rows, run_dir, cfg.trainer.eval_label)
    log.write({"step": len(pairs), "summary/reference_reward": rows[0]["reward"]})
    refresh_report(run_dir)
    return {"run_dir": str(run_dir), "schedules": schedules, "results": rows}


def tuning_requests(cfg: SolverTuneJobConfig, prompts: list[dict]) -> list[SampleRequest]:
    """The data-driven search's samples: training prompts in turn, each with its own tuning seed (never a scoring
    seed), so the chosen grid is not fitted to the samples that score it."""
    return [SampleRequest(prompts[j % len(prompts)]["prompt"], prompts[j % len(prompts)], j % len(prompts),
                          stream_seed(Stream.TUNING_SEEDS, cfg.seed, j)) for j in range(cfg.tune.data_driven.seeds)]


def on_grid(requests: list[SampleRequest], grid: torch.Tensor) -> list[SampleRequest]:
    return [replace(r, grid=tuple(grid.tolist())) for r in requests]


def sample_on(rollout: WorkerGroup, requests: list[SampleRequest], candidate: CandidateConfig,
              grid: torch.Tensor) -> torch.Tensor:
    shards = rollout.map("generate", on_grid(requests, grid), sampler=candidate.solver,
                         solver_options=candidate.options())
    return RolloutBatch.concat(shards).samples


def mean_squared_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of the per-element mean squared difference (model space), the search's objective."""
    return float((samples - reference).pow(2).flatten(1).mean(1).mean())


def result_row(cfg: SolverTuneJobConfig, batch: RolloutBatch, reference: RolloutBatch, name: str,
               nfe: int) -> dict[str, Any]:
    metrics = eval_metrics(batch, cfg.trainer.eval_metric)
    return {"candidate": name, "nfe": nfe, "reward": metrics["eval/headline"],
            "distance": mean_squared_distance(batch.samples, reference.samples)}


def numeric(row: dict[str, Any]) -> dict[str, Any]:
    """A results row as metrics.jsonl keys (tune/<candidate>/...)."""
    prefix = f"tune/{row['candidate']}"
    return {"tune/nfe": row["nfe"], f"{prefix}/reward": row["reward"], f"{prefix}/distance": row["distance"]}


def better(row: dict, best: dict, select: str) -> bool:
    if select == "distance":
        return row["distance"] < best["distance"]
    return (row["reward"], -row["distance"]) > (best["reward"], -best["distance"])
