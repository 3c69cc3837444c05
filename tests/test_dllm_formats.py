"""Checkpoint formats of the public dLLMs (diffrl.models.dllm.formats), on tiny random checkpoints written by
diffrl.models.dllm.tiny_checkpoints: the loaded model's logits against an independent forward — transformers' own
Qwen2ForCausalLM for Dream and Fast-dLLM v2, a plain-torch LLaDA forward written here from NVlabs/Fast-dLLM
llada/model/modeling_llada.py — the round trip through MaskedDiffusionLM.from_pretrained, and the refusals."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from diffrl.models.dllm.adapter import Layout, MaskedDiffusionLM  # noqa: E402
from diffrl.models.dllm.formats import load_checkpoint  # noqa: E402
from diffrl.models.dllm.tiny_checkpoints import WORDS, write_checkpoint  # noqa: E402
from diffrl.models.dllm.transformer import DLLMConfig  # noqa: E402

SIZES = DLLMConfig(vocab_size=48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=40,
                   mask_token_id=47, block_size=4, rope_theta=1000.0, norm_eps=1e-5)
PAD = [0, 2]  # left padding of each row
PROMPT_END, LENGTH = 6, 14  # prompt slots [0, 6) (row 1: [2, 6)), then two Fast-dLLM v2 blocks of 4 and 4 more slots


def left_padded_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random tokens [B, L] (padding id 0 on the left), RoPE positions counted from each row's first real token,
    and which slots are real."""
    tokens = torch.randint(1, SIZES.vocab_size, (len(PAD), LENGTH), generator=torch.Generator().manual_seed(seed))
    slots, pad = torch.arange(LENGTH), torch.tensor(PAD)[:, None]
    real = slots >= pad
    return tokens.masked_fill(~real, 0), (slots - pad).clamp(min=0), real


def allowed_keys(block_size: int | None) -> torch.Tensor:
    """bool [B, L, L]: a real query sees the real keys (all of them, or under Fast-dLLM v2's block-causal pattern:
    the prompt is block 0, each following `block_size` slots one block, a query sees blocks <= its own); a padding
    query sees only itself."""
    q, k = torch.arange(LENGTH)[:, None], torch.arange(LENGTH)[None, :]
    pad = torch.tensor(PAD)[:, None, None]
    allowed = (k >= pad).expand(len(PAD), LENGTH, LENGTH)
    if block_size is not None:
        block = [0 if s < PROMPT_END else 1 + (s - PROMPT_END) // block_size for s in range(LENGTH)]
        block = torch.tensor(block)
        allowed = allowed & (block[None, :] <= block[:, None])
    return torch.where(q < pad, k == q, allowed)


def qwen2_logits(directory: Path, config: DLLMConfig, tokens: torch.Tensor, positions: torch.Tensor,
                 allowed: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen2ForCausalLM of the same sizes, holding the checkpoint's tensors (strict load: the names
    are Qwen2's), under `allowed` as a 4D additive float mask. transformers 5's create_causal_mask returns a 4D mask
    as given (masking_utils._preprocess_mask_arguments exits early on it) and eager attention adds it to the scores,
    so the causal mask is not imposed."""
    reference = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta}, attn_implementation="eager"))
    reference.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        return reference.eval()(input_ids=tokens, attention_mask=additive, position_ids=positions).logits


@pytest.mark.parametrize("format, block_size", [("dream", None), ("fast_dllm_v2", SIZES.block_size)])
def test_qwen2_formats_match_transformers_qwen2(tmp_path, format, block_size):
    config = write_checkpoint(tmp_path, format, SIZES, seed=1)
    model = load_checkpoint(tmp_path).eval()
    assert model.config == config
    tokens, positions, real = left_padded_batch(seed=2)
    allowed = allowed_keys(block_size)
    with torch.no_grad():
        ours = model(tokens, positions, allowed)
    theirs = qwen2_logits(tmp_path, config, tokens, positions, allowed)
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_fast_dllm_v2_block_mask_is_the_adapters(tmp_path):
    """The block-causal mask built above is the one MaskedDiffusionLM gives a v2 model, for every real query."""
    write_checkpoint(tmp_path, "fast_dllm_v2", SIZES, seed=1)
    lm = MaskedDiffusionLM.from_pretrained(tmp_path)
    layout = Layout(torch.tensor(PAD), PROMPT_END, LENGTH)
    slots = torch.arange(LENGTH).expand(len(PAD), -1)
    _, _, real = left_padded_batch(seed=2)
    adapter_mask = lm.attend(layout, torch.arange(len(PAD)), slots, slots)
    assert torch.equal(adapter_mask[real], allowed_keys(SIZES.block_size)[real])


def llada_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    """LLaDAModelLM's forward with its llama block, in plain torch from the checkpoint's tensors (NVlabs/Fast-dLLM
    llada/model/modeling_llada.py): RMSNorm, RoPE over positions 0..L-1 with rotate_half, bidirectional attention,
    ff_out(silu(ff_proj(x)) * up_proj(x)), ln_f, then ff_out or the tied wte."""
    raw = json.loads((directory / "config.json").read_text())
    stored = load_file(str(directory / "model.safetensors"))
    tensors = {name.removeprefix("model.transformer."): tensor for name, tensor in stored.items()}
    d, heads, kv_heads, eps = raw["d_model"], raw["n_heads"], raw["n_kv_heads"], raw["rms_norm_eps"]
    head_dim, (batch, length) = d // heads, tokens.shape

    def rms(x, name):
        return tensors[name] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def linear(x, name):
        return F.linear(x, tensors[name + ".weight"], tensors.get(name + ".bias"))

    inv_freq = 1.0 / (raw["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(length).float(), inv_freq)
    sin, cos = torch.cat([freqs, freqs], -1).sin(), torch.cat([freqs, freqs], -1).cos()

    def rotary(x):
        first, second = x.view(*x.shape[:-1], 2, head_dim // 2).unbind(-2)
        return x * cos + torch.cat([-second, first], -1) * sin

    def split_heads(x, n):
        return x.view(batch, length, n, head_dim).transpose(1, 2)

    x = tensors["wte.weight"][tokens]
    for i in range(raw["n_layers"]):
        block = f"blocks.{i}."
        h = rms(x, block + "attn_norm.weight")
        q = rotary(split_heads(linear(h, block + "q_proj"), heads))
        k = rotary(split_heads(linear(h, block + "k_proj"), kv_heads)).repeat_interleave(heads // kv_heads, 1)
        v = split_heads(linear(h, block + "v_proj"), kv_heads).repeat_interleave(heads // kv_heads, 1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / head_dim ** 0.5, dim=-1) @ v
        x = x + linear(attention.transpose(1, 2).reshape(batch, length, d), block + "attn_out")
        h = rms(x, block + "ff_norm.weight")
        x = x + linear(F.silu(linear(h, block + "ff_proj")) * linear(h, block + "up_proj"), block + "ff_out")
    x = rms(x, "ln_f.weight")
    return x @ (tensors["wte.weight"] if raw["weight_tying"] else tensors["ff_out.weight"]).T


@pytest.mark.parametrize("variant", [dict(), dict(tie_embeddings=True, qkv_bias=True, num_kv_heads=1)],
                         ids=["llada-8b-like", "tied-qkv-bias-mqa"])
def test_llada_matches_reference_forward(tmp_path, variant):
    sizes = replace(SIZES, **variant)
    config = write_checkpoint(tmp_path, "llada", sizes, seed=3)
    model = load_checkpoint(tmp_path).eval()
    assert model.config == config
    tokens = torch.randint(0, SIZES.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))
    positions = torch.arange(10).expand(2, -1)
    with torch.no_grad():
        ours = model(tokens, positions, torch.ones(2, 10, 10, dtype=torch.bool))
        theirs = llada_logits(tmp_path, tokens)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("format, attention, shift, block_size", [
    ("llada", "bidirectional", False, 0), ("dream", "bidirectional", True, 0),
    ("fast_dllm_v2", "block_causal", True, SIZES.block_size)])
def test_from_pretrained_round_trip(tmp_path, format, attention, shift, block_size):
    """Fast-dLLM v2's config.json has no mask_token_id here: the id comes from the tokenizer's "|<MASK>|"."""
    write_checkpoint(tmp_path, format, SIZES, seed=5)
    lm = MaskedDiffusionLM.from_pretrained(tmp_path)
    assert (lm.config.attention, lm.config.shift_logits, lm.config.block_size) == (attention, shift, block_size)
    assert lm.config.mask_token_id == lm.tokenizer.mask_token_id == SIZES.mask_token_id
    prompt = "what is two plus three"
    ids = lm.tokenizer.encode_prompt(prompt)
    assert ids == [WORDS.index(word) + 1 for word in prompt.split()]
    assert lm.tokenizer.decode_answer(ids + [SIZES.mask_token_id, lm.tokenizer.eos_token_id, ids[0]]) == prompt


def test_dtype_is_kept_or_cast(tmp_path):
    write_checkpoint(tmp_path, "dream", SIZES, dtype=torch.bfloat16)
    assert {p.dtype for p in load_checkpoint(tmp_path).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_checkpoint(tmp_path, dtype=torch.float32).parameters()} == {torch.float32}


def test_sharded_checkpoint_loads_like_one_file(tmp_path):
    write_checkpoint(tmp_path, "fast_dllm_v2", SIZES, seed=6)
    whole = load_checkpoint(tmp_path).state_dict()
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard in shards.items():
        save_file({name: tensors[name] for name in shard}, str(tmp_path / file))
    weight_map = {name: file for file, shard in shards.items() for name in shard}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = load_checkpoint(tmp_path).state_dict()
    assert sharded.keys() == whole.keys() and all(torch.equal(sharded[k], whole[k]) for k in whole)


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_unknown_model_type_is_refused_naming_the_file(tmp_path):
    write_checkpoint(tmp_path, "dream", SIZES)
    edit_config(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match=r"config\.json: model_type 'gpt2' .*supported: 'llada'"):
        load_checkpoint(tmp_path)


def test_plain_qwen2_is_not_a_dllm(tmp_path):
    write_checkpoint(tmp_path, "dream", SIZES)
    edit_config(tmp_path, model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    with pytest.raises(ValueError, match=r"config\.json: model_type 'qwen2' is a plain autoregressive"):
        load_checkpoint(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    write_checkpoint(tmp_path, "dream", SIZES)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.mlp.extra.weight"] = tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.1\.mlp\.up_proj\.weight'\].*"
                                         r"unexpected \['model\.layers\.0\.mlp\.extra\.weight'\]"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("key, value", [("block_type", "sequential"), ("activation_type", "swiglu"),
                                        ("layer_norm_type", "default"), ("include_bias", True)])
def test_unsupported_llada_variant_names_the_key(tmp_path, key, value):
    write_checkpoint(tmp_path, "llada", SIZES)
    edit_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=rf"config\.json: {key}={value!r} is a LLaDA variant"):
        load_checkpoint(tmp_path)


def test_fast_dllm_v2_without_a_mask_token_names_the_key(tmp_path):
    write_checkpoint(tmp_path, "fast_dllm_v2", SIZES)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"config\.json: mask_token_id is absent"):
        load_checkpoint(tmp_path)
