"""Loaders of public masked-diffusion LM checkpoints onto `DLLMTransformer`: a local directory with config.json and
safetensors weights (one file, or shards listed by model.safetensors.index.json); nothing is downloaded or unpickled.

- LLaDA (ML-GSAI/LLaDA, GSAI-ML/LLaDA-8B-*): config keys and weight names of LLaDAModelLM as in NVlabs/Fast-dLLM
  llada/model/{configuration,modeling}_llada.py; only its "llama" block (separate q/k/v, SwiGLU
  ff_out(silu(ff_proj(x)) * up_proj(x)), RMSNorm, half-split RoPE) is supported; other variants are refused by key.
- Dream (Dream-org/Dream-v0-*-7B): Qwen2 weight names with q/k/v bias (NVlabs/Fast-dLLM dream/model/modeling_dream.py).
- Fast-dLLM v2 (Efficient-Large-Model/Fast_dLLM_v2_7B): Qwen2.5 weights under a block-causal mask of `bd_size`
  tokens (its modeling.py, Fast_dLLM_QwenForCausalLM).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from diffrl.models.dllm.transformer import DLLMConfig, DLLMTransformer

CONFIG_FILE, INDEX_FILE, TOKENIZER_FILE = "config.json", "model.safetensors.index.json", "tokenizer.json"
FORMATS = ("llada", "dream", "fast_dllm_v2")
LLADA_8B_MASK_TOKEN_ID = 126336  # ML-GSAI/LLaDA generate.py's mask_id
DREAM_MASK_TOKEN_ID = 151666  # DreamConfig's default
FAST_DLLM_V2_MASK_TOKEN = "|<MASK>|"  # Fast_dLLM_v2_7B tokenizer's mask token
FAST_DLLM_V2_BLOCK_SIZE = 32  # Fast_dLLM_QwenConfig's default bd_size

# LLaDA config keys that select an architecture variant: (ModelConfig's default, the values DLLMTransformer implements)
LLADA_VARIANTS: dict[str, tuple[Any, tuple]] = {
    "block_type": ("sequential", ("llama",)),  # "sequential" fuses q/k/v into att_proj and has no up_proj
    "activation_type": ("swiglu", ("silu",)),  # the llama block gates ff_proj with silu; "swiglu" would split it
    "layer_norm_type": ("default", ("rms",)),
    "layer_norm_with_affine": (True, (True,)),
    "bias_for_layer_norm": (None, (None, False)),
    "include_bias": (False, (False,)),  # bias on attn_out, ff_proj, up_proj, ff_out
    "rope": (False, (True,)),
    "alibi": (False, (False,)),
    "attention_layer_norm": (False, (False,)),  # q/k norms
    "input_emb_norm": (False, (False,)),
    "scale_logits": (False, (False,)),
    "block_group_size": (1, (1,)),  # grouped blocks are stored as block_groups.N.M
}
LLADA_BLOCK = {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
               "o_proj": "attn_out", "mlp_norm": "ff_norm", "gate_proj": "ff_proj", "up_proj": "up_proj",
               "down_proj": "ff_out"}
LLADA_TOP = {"embed.weight": "wte.weight", "norm.weight": "ln_f.weight", "lm_head.weight": "ff_out.weight"}
QWEN2_BLOCK = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
               "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
               "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj"}
QWEN2_TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
LAYER_PARAMETER = re.compile(r"layers\.(\d+)\.(\w+)\.(weight|bias)")


def checkpoint_name(format: str, name: str) -> str:
    """The checkpoint's tensor name of the `DLLMTransformer` parameter `name` in `format`."""
    layer = LAYER_PARAMETER.fullmatch(name)
    if format == "llada":
        if layer:
            return f"model.transformer.blocks.{layer[1]}.{LLADA_BLOCK[layer[2]]}.{layer[3]}"
        return "model.transformer." + LLADA_TOP[name]
    if layer:
        return f"model.layers.{layer[1]}.{QWEN2_BLOCK[layer[2]]}.{layer[3]}"
    return QWEN2_TOP[name]


def detect_format(raw: dict[str, Any], path: Path) -> str:
    """The format of a config.json from its `model_type` (and, for Fast-dLLM v2, `architectures`)."""
    model_type = str(raw.get("model_type", ""))
    architectures = [str(a) for a in raw.get("architectures") or []]
    if model_type.lower() == "llada":
        return "llada"
    if model_type.lower() == "dream":
        return "dream"
    if "fast_dllm" in model_type.lower() or any("fast_dllm" in a.lower() for a in architectures):
        return "fast_dllm_v2"
    if model_type.lower() == "qwen2":
        raise ValueError(f"{path}: model_type 'qwen2' is a plain autoregressive Qwen2 checkpoint, not a "
                         "masked-diffusion LM (a Fast-dLLM v2 checkpoint has a model_type or architectures entry "
                         "containing 'Fast_dLLM')")
    raise ValueError(f"{path}: model_type {model_type!r} is not a supported dLLM checkpoint; supported: 'llada' "
                     "(LLaDA), 'Dream' (Dream), a model_type containing 'fast_dllm' (Fast-dLLM v2), or a native "
                     "directory with dllm_config.json")


def required(raw: dict[str, Any], key: str, path: Path) -> Any:
    if key not in raw:
        raise ValueError(f"{path}: missing key {key!r}")
    return raw[key]


def present(raw: dict[str, Any], key: str, default: Any) -> Any:
    """raw[key], or `default` where the key is absent or null."""
    return default if raw.get(key) is None else raw[key]


def llada_config(raw: dict[str, Any], directory: Path) -> DLLMConfig:
    """DLLMConfig of a LLaDA config.json; absent keys take LLaDA ModelConfig's defaults, except the mask token
    (LLaDA-8B's 126336)."""
    path = directory / CONFIG_FILE
    for key, (default, supported) in LLADA_VARIANTS.items():
        if raw.get(key, default) not in supported:
            raise ValueError(f"{path}: {key}={raw.get(key, default)!r} is a LLaDA variant DLLMTransformer does not "
                             f"implement (supported: {list(supported)})")
    d_model, heads = required(raw, "d_model", path), required(raw, "n_heads", path)
    kv_heads = raw.get("n_kv_heads") or (1 if raw.get("multi_query_attention") else heads)
    return DLLMConfig(
        vocab_size=raw.get("embedding_size") or required(raw, "vocab_size", path), hidden_size=d_model,
        num_layers=required(raw, "n_layers", path), num_heads=heads, num_kv_heads=kv_heads,
        intermediate_size=raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * d_model,
        mask_token_id=present(raw, "mask_token_id", LLADA_8B_MASK_TOKEN_ID), attention="bidirectional",
        shift_logits=False, rope_theta=float(raw.get("rope_theta", 10000.0)),
        norm_eps=float(raw.get("rms_norm_eps", 1e-5)), qkv_bias=bool(raw.get("include_qkv_bias") or False),
        tie_embeddings=bool(raw.get("weight_tying", True)))


def qwen2_rope_theta(raw: dict[str, Any], path: Path) -> float:
    """RoPE base of a Qwen2-style config: `rope_theta` or transformers 5's `rope_parameters`; no scaled RoPE."""
    if raw.get("rope_scaling"):
        raise ValueError(f"{path}: rope_scaling={raw['rope_scaling']!r} is not supported (plain RoPE only)")
    parameters = raw.get("rope_parameters") or {}
    if parameters.get("rope_type", "default") != "default":
        raise ValueError(f"{path}: rope_parameters.rope_type={parameters['rope_type']!r} is not supported")
    return float(parameters.get("rope_theta", raw.get("rope_theta", 10000.0)))


def qwen2_config(raw: dict[str, Any], directory: Path, **pattern: Any) -> DLLMConfig:
    """DLLMConfig of a Qwen2-style config.json (Dream, Fast-dLLM v2: q/k/v bias, SwiGLU, RMSNorm)."""
    path = directory / CONFIG_FILE
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act={raw['hidden_act']!r} is not supported (silu only)")
    if raw.get("use_sliding_window"):
        raise ValueError(f"{path}: use_sliding_window=true is not supported")
    hidden, heads = required(raw, "hidden_size", path), required(raw, "num_attention_heads", path)
    if raw.get("head_dim") not in (None, hidden // heads):
        raise ValueError(f"{path}: head_dim={raw['head_dim']} differs from hidden_size / num_attention_heads")
    return DLLMConfig(
        vocab_size=required(raw, "vocab_size", path), hidden_size=hidden,
        num_layers=required(raw, "num_hidden_layers", path), num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        intermediate_size=required(raw, "intermediate_size", path), rope_theta=qwen2_rope_theta(raw, path),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)), qkv_bias=True,
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)), shift_logits=True, **pattern)


def dream_config(raw: dict[str, Any], directory: Path) -> DLLMConfig:
    return qwen2_config(raw, directory, attention="bidirectional",
                        mask_token_id=present(raw, "mask_token_id", DREAM_MASK_TOKEN_ID))


def fast_dllm_v2_config(raw: dict[str, Any], directory: Path) -> DLLMConfig:
    """Block-causal over `bd_size` tokens; the mask token from config.json or else the tokenizer's "|<MASK>|"."""
    mask_token_id = raw.get("mask_token_id")
    if mask_token_id is None:
        mask_token_id = tokenizer_token_id(directory, FAST_DLLM_V2_MASK_TOKEN)
    return qwen2_config(raw, directory, attention="block_causal", mask_token_id=mask_token_id,
                        block_size=int(present(raw, "bd_size", FAST_DLLM_V2_BLOCK_SIZE)))


def tokenizer_token_id(directory: Path, token: str) -> int:
    """The id of `token` in the directory's tokenizer.json (its added tokens or its vocabulary)."""
    path = directory / TOKENIZER_FILE
    if not path.exists():
        raise ValueError(f"{directory / CONFIG_FILE}: mask_token_id is absent and there is no {TOKENIZER_FILE} to "
                         f"find the mask token {token!r} in")
    data = json.loads(path.read_text())
    ids = {added["content"]: added["id"] for added in data.get("added_tokens", [])}
    ids = {**data.get("model", {}).get("vocab", {}), **ids}
    if token not in ids:
        raise ValueError(f"{directory / CONFIG_FILE}: mask_token_id is absent and {path} has no {token!r} token")
    return int(ids[token])


CONFIG_READERS: dict[str, Callable[[dict[str, Any], Path], DLLMConfig]] = {
    "llada": llada_config, "dream": dream_config, "fast_dllm_v2": fast_dllm_v2_config}


def read_config(directory: Path) -> tuple[str, DLLMConfig]:
    """The format and the DLLMConfig of a checkpoint directory's config.json."""
    path = directory / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE} (nor dllm_config.json)")
    raw = json.loads(path.read_text())
    format = detect_format(raw, path)
    config = CONFIG_READERS[format](raw, directory)
    if not 0 <= config.mask_token_id < config.vocab_size:
        raise ValueError(f"{path}: mask_token_id={config.mask_token_id} is outside the vocabulary "
                         f"(size {config.vocab_size})")
    return format, config


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files: the shards of model.safetensors.index.json if present."""
    if (directory / INDEX_FILE).exists():
        files = sorted({directory / name for name in json.loads((directory / INDEX_FILE).read_text())["weight_map"]
                        .values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def load_checkpoint(directory: str | Path, dtype: torch.dtype | None = None) -> DLLMTransformer:
    """A LLaDA, Dream or Fast-dLLM v2 checkpoint directory as a DLLMTransformer, its tensors in their stored dtype
    (or cast to `dtype`). Every parameter must be present with its shape, and no other tensor."""
    directory = Path(directory)
    format, config = read_config(directory)
    with torch.device("meta"):
        model = DLLMTransformer(config)
    tensors = read_tensors(directory)
    expected = {checkpoint_name(format, name): (name, p.shape) for name, p in model.state_dict().items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{directory}: the {format} tensors do not match {CONFIG_FILE}: {len(missing)} missing "
                         f"{missing[:4]}, {len(extra)} unexpected {extra[:4]}")
    state = {}
    for stored, (name, shape) in expected.items():
        tensor = tensors[stored]
        if tensor.shape != shape:
            raise ValueError(f"{directory}: tensor {stored} has shape {list(tensor.shape)}; {CONFIG_FILE} implies "
                             f"{list(shape)}")
        state[name] = tensor if dtype is None else tensor.to(dtype)
    model.load_state_dict(state, assign=True)
    return model
