"""Tiny random checkpoints in the public dLLM formats read by `diffrl.models.dllm.formats`, for tests and examples:
config.json in the format's own keys, model.safetensors in its own tensor names, and a word-level tokenizer.json
(with tokenizer_config.json) built locally with the `tokenizers` library, so that
`MaskedDiffusionLM.from_pretrained` loads the directory end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from diffrl.models.dllm.formats import (CONFIG_FILE, FAST_DLLM_V2_BLOCK_SIZE, FAST_DLLM_V2_MASK_TOKEN, FORMATS,
                                        TOKENIZER_FILE, checkpoint_name)
from diffrl.models.dllm.transformer import DLLMConfig, DLLMTransformer

EOS_TOKEN = "<|endoftext|>"
MASK_TOKENS = {"llada": "<|mdm_mask|>", "dream": "<|mask|>", "fast_dllm_v2": FAST_DLLM_V2_MASK_TOKEN}
WORDS = ("the", "a", "cat", "dog", "sat", "on", "mat", "what", "is", "two", "plus", "three", "=", "?", ".")


def format_config(format: str, config: DLLMConfig) -> DLLMConfig:
    """What `format` makes of `config`'s sizes: its attention pattern and logit shift, q/k/v bias for the Qwen2
    formats, and Fast-dLLM v2's block size (`config.block_size`, else 32)."""
    if format == "llada":
        return replace(config, attention="bidirectional", shift_logits=False, block_size=0)
    if format == "dream":
        return replace(config, attention="bidirectional", shift_logits=True, block_size=0, qkv_bias=True)
    if format == "fast_dllm_v2":
        return replace(config, attention="block_causal", shift_logits=True, qkv_bias=True,
                       block_size=config.block_size or FAST_DLLM_V2_BLOCK_SIZE)
    raise ValueError(f"format: got {format!r}; allowed: {list(FORMATS)}")


def config_json(format: str, config: DLLMConfig) -> dict[str, Any]:
    """config.json of `format` (LLaDA's ModelConfig keys; Qwen2's for Dream and v2, whose mask token id is left
    to the tokenizer's "|<MASK>|" as in Fast_dLLM_v2_7B)."""
    if format == "llada":
        return {"model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama",
                "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "alibi": False,
                "d_model": config.hidden_size, "n_heads": config.num_heads, "n_kv_heads": config.num_kv_heads,
                "n_layers": config.num_layers, "mlp_hidden_size": config.intermediate_size,
                "vocab_size": config.vocab_size, "embedding_size": config.vocab_size,
                "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps, "include_bias": False,
                "include_qkv_bias": config.qkv_bias, "weight_tying": config.tie_embeddings,
                "mask_token_id": config.mask_token_id, "eos_token_id": 0, "pad_token_id": 0}
    qwen2 = {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
             "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
             "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
             "hidden_act": "silu", "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
             "rope_scaling": None, "use_sliding_window": False, "tie_word_embeddings": config.tie_embeddings,
             "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if format == "dream":
        return {"model_type": "Dream", "architectures": ["DreamModel"], **qwen2, "mask_token_id": config.mask_token_id}
    return {"model_type": "Fast_dLLM_Qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"], **qwen2,
            "bd_size": config.block_size}


def random_tensors(format: str, config: DLLMConfig, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every parameter under the format's name: matrices N(0, 1 / fan_in), biases 0.1 N(0, 1), norms 1 + 0.1 N(0, 1)
    (not ones, so that a swapped norm shows)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in DLLMTransformer(config).state_dict().items()}
    tensors = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) == 2:
            value = noise / shape[1] ** 0.5
        else:
            value = 0.1 * noise + (1.0 if name.endswith("norm.weight") else 0.0)
        tensors[checkpoint_name(format, name)] = value.to(dtype)
    return tensors


def write_tokenizer(directory: Path, vocab_size: int, mask_token_id: int, mask_token: str) -> None:
    """A whitespace word-level tokenizer: id 0 is the end-of-text (and padding) token, then WORDS, fillers, and the
    mask token at `mask_token_id`."""
    if not len(WORDS) < mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id: {mask_token_id} must lie in ({len(WORDS)}, vocab_size={vocab_size})")
    tokens = [EOS_TOKEN, *WORDS] + [f"<|filler_{i}|>" for i in range(len(WORDS) + 1, vocab_size)]
    tokens[mask_token_id] = mask_token
    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token=EOS_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, special=True), AddedToken(mask_token, special=True)])
    tokenizer.save(str(directory / TOKENIZER_FILE))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN}) + "\n")


def write_checkpoint(directory: str | Path, format: str, config: DLLMConfig, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> DLLMConfig:
    """A random checkpoint of `config`'s sizes in `format` ("llada", "dream" or "fast_dllm_v2"); returns the config
    the loader reads back (`format_config`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = format_config(format, config)
    (directory / CONFIG_FILE).write_text(json.dumps(config_json(format, config), indent=1) + "\n")
    save_file(random_tensors(format, config, seed, dtype), str(directory / "model.safetensors"))
    write_tokenizer(directory, config.vocab_size, config.mask_token_id, MASK_TOKENS[format])
    return config
