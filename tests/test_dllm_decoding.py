"""Masked-diffusion decoding (diffrl.models.dllm.generate) on small random models in float64 (so that cached and
uncached forwards agree far below any gap between confidences): the exactness of caches where attention allows
it, the fast path at threshold 1.0 against the baseline, NFE accounting against counted forwards, and a
sequence's independence from its batch."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from diffrl.models.dllm.adapter import MaskedDiffusionLM  # noqa: E402
from diffrl.models.dllm.generate import DecodeOptions, generate  # noqa: E402
from diffrl.models.dllm.tokenizer import CharTokenizer  # noqa: E402
from diffrl.models.dllm.transformer import DLLMConfig, DLLMTransformer  # noqa: E402

TOKENIZER = CharTokenizer("0123456789=")
PROMPTS = ["31415926=", "2718=", "161803398874=", "57=", "1414213="]


def random_lm(attention: str, shift: bool = False, seed: int = 0) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    config = DLLMConfig(vocab_size=len(TOKENIZER), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=48, mask_token_id=TOKENIZER.mask_token_id, attention=attention,
                        shift_logits=shift, block_size=4)
    model = DLLMTransformer(config)
    for name, p in model.named_parameters():  # larger weights than the default init: peaked confidences
        if "norm" not in name:
            torch.nn.init.normal_(p, std=0.3)
    return MaskedDiffusionLM(model.double().eval(), TOKENIZER)


def decode(lm, prompts=PROMPTS, **options):
    return generate(lm, [TOKENIZER.encode_prompt(p) for p in prompts], DecodeOptions(**options))


def answers(results):
    return [r.answer for r in results]


@pytest.mark.parametrize("attention,shift", [("causal", False), ("causal", True), ("block_causal", True)])
@pytest.mark.parametrize("rule", [dict(rule="top_k", steps=16), dict(rule="threshold", threshold=0.5)])
def test_caches_are_exact_when_attention_never_looks_ahead(attention, shift, rule):
    lm = random_lm(attention, shift)
    options = dict(gen_length=16, block_length=4, **rule)
    baseline = decode(lm, **options)
    for cache in ("prefix", "dual"):
        cached = decode(lm, cache=cache, **options)
        assert answers(cached) == answers(baseline), cache
        assert [r.nfe for r in cached] == [r.nfe for r in baseline], cache


def test_caches_change_a_bidirectional_models_forward_but_still_decode_every_token():
    lm = random_lm("bidirectional")
    options = dict(gen_length=16, block_length=4, rule="threshold", threshold=0.5)
    for cache in ("none", "prefix", "dual"):
        for result in decode(lm, cache=cache, **options):
            assert TOKENIZER.mask_token_id not in result.answer and len(result.answer) == 16


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
def test_threshold_one_with_one_token_a_step_is_the_baseline(attention):
    lm = random_lm(attention, shift=attention == "block_causal", seed=1)
    baseline = decode(lm, gen_length=16, block_length=4, steps=16, rule="top_k")
    fast = decode(lm, gen_length=16, block_length=4, rule="threshold", threshold=1.0)
    assert answers(fast) == answers(baseline)
    assert [r.nfe for r in fast] == [r.nfe for r in baseline] == [16] * len(PROMPTS)


class CountingModel(torch.nn.Module):
    """Wraps the network and counts its forward calls (one sequence in the batch)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, 0
        self.embed = inner.embed

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("options", [
    dict(rule="top_k", steps=8), dict(rule="top_k", steps=16, cache="prefix"), dict(rule="top_k", steps=8,
                                                                                  cache="dual"),
    dict(rule="threshold", threshold=0.4, cache="dual"), dict(rule="factor", factor=2.0),
    dict(rule="threshold", threshold=0.4, cache="dual", sub_block_length=2),
])
def test_nfe_is_the_number_of_forwards(options):
    lm = random_lm("block_causal" if options.get("sub_block_length") else "bidirectional", seed=2)
    counted = CountingModel(lm.model)
    lm.model = counted
    (result,) = decode(lm, prompts=PROMPTS[:1], gen_length=16, block_length=4, **options)
    assert result.nfe == counted.calls
    if options["rule"] == "top_k":
        assert result.nfe == options["steps"]  # the refresh forward of a block is its first step
    else:
        assert 16 // 4 <= result.nfe <= 16


@pytest.mark.parametrize("options", [
    dict(rule="top_k", steps=16), dict(rule="threshold", threshold=0.4, cache="dual"),
    dict(rule="factor", factor=2.0, cache="prefix"),
    dict(rule="threshold", threshold=0.4, cache="dual", sub_block_length=2, model="block_causal"),
])
def test_a_sequence_decodes_the_same_alone_and_in_any_batch(options):
    options = dict(options)
    lm = random_lm(options.pop("model", "bidirectional"), seed=3)
    together = decode(lm, gen_length=16, block_length=4, **options)
    assert len({r.nfe for r in together}) > 1 or options["rule"] == "top_k"  # rows progress at their own pace
    for index, prompt in enumerate(PROMPTS):
        (alone,) = decode(lm, prompts=[prompt], gen_length=16, block_length=4, **options)
        assert alone.answer == together[index].answer and alone.nfe == together[index].nfe
    reordered = decode(lm, prompts=PROMPTS[::-1], gen_length=16, block_length=4, **options)
    assert answers(reordered) == answers(together)[::-1]


def test_options_are_checked():
    with pytest.raises(ValueError, match="block_length"):
        DecodeOptions(gen_length=30, block_length=8)
    with pytest.raises(ValueError, match="steps"):
        DecodeOptions(gen_length=32, block_length=8, steps=6)
    with pytest.raises(ValueError, match="sub_block_length"):
        DecodeOptions(block_length=8, sub_block_length=3)
    with pytest.raises(ValueError, match="block_length"):
        decode(random_lm("block_causal", True), gen_length=16, block_length=8, steps=16)


@pytest.mark.parametrize("name, options", [
    ("sorting_dllm", dict(rule="threshold", threshold=0.9, cache="dual")),
    ("sorting_dllm_v2", dict(rule="threshold", threshold=0.9, cache="dual", sub_block_length=4)),
])
def test_the_shipped_models_sort_held_out_digits(name, options):
    """The shipped checkpoints load from the package and decode held-out problems (never trained on) exactly."""
    from diffrl.envs.sorting import heldout_problems

    lm = MaskedDiffusionLM.from_pretrained(f"builtin:{name}").eval()
    problems = heldout_problems(40, 32, seed=0)
    prompts = [lm.tokenizer.encode_prompt(p["prompt"]) for p in problems]
    with torch.no_grad():
        out = generate(lm, prompts, DecodeOptions(gen_length=32, block_length=8, **options))
    correct = sum(r.text == p["reference"] for r, p in zip(out, problems))
    assert correct / len(problems) >= 0.9
