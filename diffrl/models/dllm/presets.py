"""The project's own tiny dLLMs (trained by `kind: pretrain` on the digit-sorting world, configs/pretrain_dllm*.yaml):
a bidirectional masked-diffusion LM in LLaDA's form and a block-causal one in Fast-dLLM v2's form (token shift,
blocks of 8), both over the sorting world's character tokenizer. `build_preset` gives a fresh initialization."""

from __future__ import annotations

import torch

from diffrl.envs.sorting import ALPHABET
from diffrl.models.dllm.adapter import MaskedDiffusionLM
from diffrl.models.dllm.tokenizer import CharTokenizer
from diffrl.models.dllm.transformer import DLLMConfig, DLLMTransformer

PRESETS = ("tiny_dllm", "tiny_dllm_v2")
V2_BLOCK = 8


def preset_config(name: str, tokenizer: CharTokenizer) -> DLLMConfig:
    if name not in PRESETS:
        raise ValueError(f"model.name: unknown dLLM {name!r}; allowed: {list(PRESETS)}")
    sizes = dict(vocab_size=len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4,
                 intermediate_size=384, mask_token_id=tokenizer.mask_token_id)
    if name == "tiny_dllm_v2":
        return DLLMConfig(**sizes, attention="block_causal", shift_logits=True, block_size=V2_BLOCK)
    return DLLMConfig(**sizes)


def build_preset(name: str, seed: int) -> MaskedDiffusionLM:
    """A freshly initialized preset (weights from `seed`)."""
    tokenizer = CharTokenizer(ALPHABET)
    config = preset_config(name, tokenizer)
    torch.manual_seed(seed)
    model = DLLMTransformer(config)
    for module in model.modules():  # small-init (GPT-2 style) keeps the tiny model's first steps stable
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)
    return MaskedDiffusionLM(model, tokenizer)
