"""A second trained module with its own optimizer on the learner (`diffrl.workers.modules`): a toy objective trains
the denoiser and a critic head, each on its own real DeepSpeed engine; each loss reaches only its own module, a loss
that leaks into another module is named, and the critic's state resumes exactly."""

import copy

import pytest
import torch
from test_objectives import job, rollout_batch
from torch import nn

from diffrl.platform.runtime import file_rendezvous
from diffrl.platform.worker import LocalBackend, Placement, WorkerGroup
from diffrl.workers.learner import LearnerWorker
from diffrl.workers.modules import TrainedModule
from diffrl.workers.objective_base import Objective
from diffrl.workers.objectives import OBJECTIVES


def build_critic(model: nn.Module) -> nn.Module:
    """A linear head on the channel means of an image, initialized from its own generator."""
    critic = nn.Linear(3, 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in critic.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return critic


class CriticToy(Objective):
    """Flow matching for the denoiser, plus `weight` x the critic's score of its x0 prediction (the critic frozen
    there); the critic regresses the noise level t from the detached prediction."""

    needs_reference = False
    weight = 0.5
    leak = False

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        self.modules = {"critic": TrainedModule(build=build_critic, lr=1e-2)}

    def rows(self, batch, step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 + step)
        x0 = batch.samples
        t = torch.rand(len(x0), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        t_b = t.view(-1, 1, 1, 1)
        return {"index": torch.arange(len(x0)), "t": t, "x0": x0, "eps": eps, "x_t": (1 - t_b) * x0 + t_b * eps}

    def loss(self, models, rows, cond):
        v = models.policy(rows["x_t"], rows["t"], cond)
        x0_hat = rows["x_t"] - rows["t"].view(-1, 1, 1, 1) * v
        critic = models.module("critic")
        main = ((v - (rows["eps"] - rows["x0"])) ** 2).mean()
        if self.leak:
            main = main + self.weight * critic.module(x0_hat.mean((2, 3))).mean()
        else:
            with models.frozen("critic") as frozen_critic:
                main = main + self.weight * frozen_critic(x0_hat.mean((2, 3))).mean()
        critic_loss = ((critic(x0_hat.detach().mean((2, 3))).squeeze(-1) - rows["t"]) ** 2).mean()
        return {"main": main, "critic": critic_loss}, {}


class NoCriticTerm(CriticToy):
    weight = 0.0


class Leaky(CriticToy):
    leak = True


@pytest.fixture()
def toys(monkeypatch):
    for name, cls in {"critic_toy": CriticToy, "critic_toy_plain": NoCriticTerm, "critic_toy_leaky": Leaky}.items():
        monkeypatch.setitem(OBJECTIVES, name, cls)


def learner(algorithm: str, batch, scratch) -> WorkerGroup:
    cfg = job("awm")
    learner_cfg = {**cfg.learner.model_dump(), "algorithm": algorithm}
    scratch.mkdir(parents=True, exist_ok=True)
    args = [(0, 1, cfg.model.model_dump(), learner_cfg, len(batch), cfg.rollout.model_dump())]
    group = WorkerGroup(LocalBackend(), LearnerWorker, args, Placement(num_cpus=1), "learner")
    group.run("setup", rendezvous=file_rendezvous(scratch))
    return group


def weights(group: WorkerGroup) -> tuple[dict, dict]:
    state = group.run("state_dict")[0]
    return state["weights"], state["modules"]["critic"]["weights"]


def test_a_second_module_trains_on_its_own_engine_and_only_from_its_own_loss(toys, tmp_path):
    _, batch = rollout_batch(job("awm"))
    results = {}
    for name in ("critic_toy", "critic_toy_plain"):
        group = learner(name, batch, tmp_path / name)
        try:
            before = weights(group)
            metrics = group.scatter_async("update", [batch], step=0).results()[0]
            after = weights(group)
            results[name] = (before, after, metrics)
        finally:
            group.shutdown()
    (main0, critic0), (main1, critic1), metrics = results["critic_toy"]
    _, (plain_main, plain_critic), _ = results["critic_toy_plain"]
    assert any(not torch.equal(main0[k], main1[k]) for k in main0), "the denoiser must train"
    assert any(not torch.equal(critic0[k], critic1[k]) for k in critic0), "the critic must train"
    assert metrics["critic/loss"] > 0 and "loss" in metrics
    # The critic's update comes from its own loss only: the denoiser's critic term (frozen critic) changes the
    # denoiser's update but leaves the critic's bitwise the same.
    assert all(torch.equal(critic1[k], plain_critic[k]) for k in critic1)
    assert any(not torch.equal(main1[k], plain_main[k]) for k in main1)


def test_the_second_module_has_its_own_optimizer_and_resumes_exactly(toys, tmp_path):
    _, batch = rollout_batch(job("awm"))
    group = learner("critic_toy", batch, tmp_path / "a")
    try:
        group.scatter_async("update", [batch], step=0).results()
        state = copy.deepcopy(group.run("state_dict")[0])  # in-process: the optimizer state is live until copied
        assert [g["lr"] for g in state["modules"]["critic"]["optimizer"]["param_groups"]] == [1e-2]
        assert state["optimizer"]["param_groups"][0]["lr"] != 1e-2  # the denoiser's own optimizer and lr
        group.scatter_async("update", [batch], step=1).results()
        continued = weights(group)
    finally:
        group.shutdown()
    resumed = learner("critic_toy", batch, tmp_path / "b")
    try:
        resumed.run("load_state_dict", state)
        resumed.scatter_async("update", [batch], step=1).results()
        again = weights(resumed)
    finally:
        resumed.shutdown()
    for part, other in zip(continued, again):
        assert all(torch.equal(part[k], other[k]) for k in part)


def test_a_loss_that_reaches_another_module_is_named(toys, tmp_path):
    _, batch = rollout_batch(job("awm"))
    group = learner("critic_toy_leaky", batch, tmp_path)
    try:
        with pytest.raises(Exception, match=r"the main loss reached the parameters of module\(s\) \['critic'\]"):
            group.scatter_async("update", [batch], step=0).results()
    finally:
        group.shutdown()
