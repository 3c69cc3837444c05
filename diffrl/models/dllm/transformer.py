"""The masked-diffusion LM network: a pre-norm transformer (RMSNorm, RoPE, SwiGLU, grouped-query attention) whose
attention pattern is a config value — bidirectional (LLaDA, Dream), causal, or block-causal (Fast-dLLM v2: a token
sees its own block and every earlier block) — with a per-layer K/V cache addressed by sequence slot.

One forward serves every decoding policy: `tokens` are the window being recomputed (the whole sequence, or a
block, or a block plus the suffix), `slots` their columns in the sequence, and `attend` says which keys each query
may see. Without a cache the keys are the window's own; with a cache the window's fresh K/V are first written into
the cache at their slots (overwriting the current block in place) and the queries attend over the whole cached
sequence, so a prefix cache, a dual (prefix and suffix) cache and v2's block cache differ only in the window and
the mask the caller builds (`diffrl.models.dllm.adapter`).

The math follows the architectures of LLaDA (ML-GSAI/LLaDA, OLMo-style blocks) and Qwen2 (Dream, Fast-dLLM v2);
the parameter names are this module's own, and `diffrl.models.dllm.formats` maps each checkpoint format onto them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Attention = Literal["bidirectional", "causal", "block_causal"]
ATTENTION_KINDS = ("bidirectional", "causal", "block_causal")


@dataclass(frozen=True)
class DLLMConfig:
    """- `attention`: which keys a query sees (see the module docstring);
    - `shift_logits`: the token at slot p is predicted from the output at p - 1 (Dream and Fast-dLLM v2, which start
      from autoregressive weights); False predicts it from the output at p (LLaDA);
    - `block_size`: the block length a block-causal model was trained with (generation blocks must use it)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    mask_token_id: int
    attention: Attention = "bidirectional"
    shift_logits: bool = False
    block_size: int = 0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention: got {self.attention!r}; allowed: {list(ATTENTION_KINDS)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size} and be a "
                             f"multiple of num_kv_heads={self.num_kv_heads}")
        if self.attention == "block_causal" and self.block_size < 1:
            raise ValueError("block_size: a block-causal model needs its block length (>= 1)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> DLLMConfig:
        return cls(**json.loads(path.read_text()))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the norm of LLaDA and Qwen2 (computed in float32)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin [B, 1, W, head_dim] of rotary embeddings (Su et al., arXiv 2104.09864) in the half-split layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / head_dim))
    angles = positions.float()[..., None] * inv_freq
    emb = torch.cat([angles, angles], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Per-layer keys and values [B, kv_heads, S, head_dim] over the S slots of a sequence. Forward passes write
    their window's fresh K/V at its slots in place; rows can be taken out and put back (`rows`, `put_rows`) so
    sequences of a batch progress independently."""

    def __init__(self, keys: list[Tensor], values: list[Tensor]) -> None:
        self.keys, self.values = keys, values

    @classmethod
    def empty(cls, config: DLLMConfig, batch: int, slots: int, device, dtype) -> KVCache:
        shape = (batch, config.num_kv_heads, slots, config.head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)])

    def rows(self, index: Tensor) -> KVCache:
        return KVCache([k[index] for k in self.keys], [v[index] for v in self.values])

    def put_rows(self, index: Tensor, part: KVCache) -> None:
        for layer in range(len(self.keys)):
            self.keys[layer][index] = part.keys[layer]
            self.values[layer][index] = part.values[layer]


class Block(nn.Module):
    def __init__(self, config: DLLMConfig) -> None:
        super().__init__()
        d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.attn_norm = RMSNorm(d, config.norm_eps)
        self.q_proj = nn.Linear(d, h * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        self.mlp_norm = RMSNorm(d, config.norm_eps)
        self.gate_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, d, bias=False)
        self.heads, self.kv_heads, self.head_dim = h, kv, hd

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], attend: Tensor, slots: Tensor,
                cache: tuple[Tensor, Tensor] | None) -> Tensor:
        b, w, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, w, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, w, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, w, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            keys, values = cache
            index = slots[:, None, :, None].expand(b, self.kv_heads, w, self.head_dim)
            keys.scatter_(2, index, k)
            values.scatter_(2, index, v)
            k, v = keys, values
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None])
        x = x + self.o_proj(out.transpose(1, 2).reshape(b, w, -1))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class DLLMTransformer(nn.Module):
    """Token ids -> logits. `forward(tokens [B, W], positions [B, W], attend [B, W, K], slots, cache)`: positions
    are RoPE positions; without a cache K = W (the window attends to itself); with a cache K = S, the cache's slot
    count, and `slots` [B, W] are the window's columns (written in place before attending)."""

    def __init__(self, config: DLLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, tokens: Tensor, positions: Tensor, attend: Tensor, slots: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        if cache is not None and slots is None:
            raise ValueError("a cached forward needs the window's slots")
        x = self.embed(tokens)
        rope = rotary(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for index, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            x = layer(x, rope, attend, slots, layer_cache)
        x = self.norm(x)
        return x @ self.embed.weight.T if self.lm_head is None else self.lm_head(x)
