"""Rollout workers: a sample is a function of its seed alone, whatever the batch split; SDE with noise 0 is the ODE."""

import torch

from diffrl.kinds.rl.config import RLJobConfig
from diffrl.utils.weight_sync import pack
from diffrl.workers.batch import RolloutBatch, SampleRequest
from diffrl.workers.rollout import RolloutWorker


def make_worker(**rollout) -> RolloutWorker:
    cfg = RLJobConfig(model={"path": None}, rollout=rollout, learner={"awm": {"num_timesteps": 1}})
    worker = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump())
    worker.setup()
    return worker


def requests(n: int) -> list[SampleRequest]:
    prompts = ["a photo of a red circle", "a photo of two squares", "a photo of a triangle left of a circle"]
    return [SampleRequest(prompts[i % 3], {"tag": "t"}, i % 3, 1000 + 17 * i) for i in range(n)]


def test_same_seed_same_sample_across_batch_splits():
    reqs = requests(9)
    whole = make_worker(batch_size=64, num_steps=4).generate(reqs)
    worker = make_worker(batch_size=2, num_steps=4)
    split = RolloutBatch.concat([worker.generate(reqs[5:]), worker.generate(reqs[:5])])
    order = torch.tensor([5, 6, 7, 8, 0, 1, 2, 3, 4])  # split holds requests 5..8 then 0..4
    torch.testing.assert_close(split.samples, whole.samples[order], rtol=0, atol=1e-5)
    assert (split.images == whole.images[order.numpy()]).mean() > 0.999
    assert split.seeds.tolist() == whole.seeds[order].tolist()
    # Different seeds give different samples.
    assert not torch.allclose(whole.samples[0], whole.samples[3])


def test_sde_sampler_is_seeded_and_reduces_to_ode_at_zero_noise():
    reqs = requests(4)
    ode = make_worker(num_steps=4, sampler="ode").generate(reqs)
    sde0 = make_worker(num_steps=4, sampler="sde", noise_level=0.0).generate(reqs)
    torch.testing.assert_close(sde0.samples, ode.samples, rtol=0, atol=1e-6)
    sde_a = make_worker(num_steps=4, sampler="sde", noise_level=0.7).generate(reqs)
    sde_b = make_worker(num_steps=4, sampler="sde", noise_level=0.7, batch_size=1).generate(reqs)
    torch.testing.assert_close(sde_a.samples, sde_b.samples, rtol=0, atol=1e-5)
    assert (sde_a.samples - ode.samples).abs().max() > 1e-2


def test_rollout_batch_records_weight_version_and_images():
    worker = make_worker(num_steps=3)
    batch = worker.generate(requests(3))
    assert batch.images.shape == (3, 30, 30, 3) and batch.images.dtype.name == "uint8"
    assert batch.weight_version.tolist() == [0, 0, 0]
    weights = {k: v + 0.01 for k, v in worker.model.denoiser.state_dict().items()}
    assert worker.load_weights(pack(weights, version=3)) == 3
    assert worker.generate(requests(1)).weight_version.tolist() == [3]
