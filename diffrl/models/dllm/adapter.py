"""The masked-diffusion LM adapter: a `DLLMTransformer`, its tokenizer, and the cache plumbing of decoding.

A batch of prompts is left-padded to one length P, so every row's answer occupies the same slots [P, P + gen) and
blocks line up; padded slots are never attended and RoPE positions start at each row's first real token, so a
row's logits do not depend on what else is in the batch. `window_logits` runs the model on a window of slots per
row (the same width in a call, any start), optionally against a K/V cache, under the model's attention pattern,
and returns the logits that predict the window's tokens (shifted by one for Dream and Fast-dLLM v2 checkpoints).

Block ids for block-causal models: the prompt is block 0 and generation block k (of `block_size` slots from P)
is block k + 1; a query sees the keys of its own and earlier blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from diffrl.models.dllm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer
from diffrl.models.dllm.transformer import DLLMConfig, DLLMTransformer, KVCache
from diffrl.models.shipped import missing_hint, shipped_directory

CONFIG_FILE, WEIGHTS_FILE = "dllm_config.json", "model.safetensors"


def resolve_checkpoint(path: str | Path) -> Path:
    """`builtin:NAME` -> the package's assets/NAME; else the directory itself. The error names the path."""
    directory = shipped_directory(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model.path: {directory} is not a directory{missing_hint(path)}")
    return directory


@dataclass
class Layout:
    """Slots of a left-padded batch: `pad[b]` padding slots, then the prompt, then the answer from `prompt_end`."""

    pad: Tensor  # long [B]
    prompt_end: int
    total: int

    def block_of(self, slots: Tensor, block_size: int) -> Tensor:
        return torch.where(slots < self.prompt_end, 0, 1 + (slots - self.prompt_end).div(block_size, rounding_mode="floor"))


class MaskedDiffusionLM(nn.Module):
    """A dLLM seen by the decoder and the learner: the network (`model`, what a learner trains) and its tokenizer.
    Calling it runs the network's forward."""

    def __init__(self, model: DLLMTransformer, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.model, self.tokenizer, self.config = model, tokenizer, model.config

    def forward(self, *args, **kwargs) -> Tensor:
        return self.model(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    # ------------------------------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> None:
        """The project's native format: dllm_config.json, model.safetensors and (char tokenizer) vocab.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                  str(directory / WEIGHTS_FILE))
        if isinstance(self.tokenizer, CharTokenizer):
            self.tokenizer.save(directory)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MaskedDiffusionLM:
        """`builtin:NAME` (a checkpoint shipped in the package), a native directory, or a LLaDA / Dream /
        Fast-dLLM v2 checkpoint directory (`formats.load_checkpoint`)."""
        directory = resolve_checkpoint(path)
        if (directory / CONFIG_FILE).exists():
            config = DLLMConfig.load(directory / CONFIG_FILE)
            model = DLLMTransformer(config)
            model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        else:
            from diffrl.models.dllm.formats import load_checkpoint

            model = load_checkpoint(directory)
        return cls(model.eval(), load_tokenizer(directory, model.config.mask_token_id))

    # --------------------------------------------------------------------------------------- batching
    def pack(self, prompts: Sequence[Sequence[int]], gen_length: int) -> tuple[Tensor, Layout]:
        """Left-padded [B, P + gen_length] token ids with the answer slots masked, and their layout."""
        longest = max(len(p) for p in prompts)
        x = torch.full((len(prompts), longest + gen_length), self.tokenizer.mask_token_id, dtype=torch.long)
        pad = torch.tensor([longest - len(p) for p in prompts], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            x[row, : pad[row]] = self.tokenizer.pad_token_id
            x[row, pad[row]:longest] = torch.as_tensor(list(prompt), dtype=torch.long)
        return x.to(self.device), Layout(pad.to(self.device), longest, longest + gen_length)

    def attend(self, layout: Layout, rows: Tensor, q_slots: Tensor, k_slots: Tensor) -> Tensor:
        """bool [b, W, K]: which keys each query of `rows` sees: real (not padding) keys allowed by the attention
        pattern. A padding query sees only itself (its output is never used; this keeps softmax finite)."""
        pad = layout.pad[rows][:, None, None]
        q, k = q_slots[:, :, None], k_slots[:, None, :]
        allowed = k >= pad
        pattern = self.config.attention
        if pattern == "causal":
            allowed = allowed & (k <= q)
        elif pattern == "block_causal":
            size = self.config.block_size
            allowed = allowed & (layout.block_of(k, size) <= layout.block_of(q, size))
        return allowed | ((q < pad) & (k == q))

    def window_logits(self, x: Tensor, layout: Layout, rows: Tensor, starts: Tensor, width: int,
                      cache: KVCache | None) -> Tensor:
        """Logits [b, width, V] predicting the tokens of slots [start, start + width) of each row in `rows`.

        The model runs on those slots (one slot earlier when logits are shifted, so that every slot's K/V in the
        window is written); with a cache the window's K/V are written into it and the keys are all S slots, else
        the keys are the window itself."""
        shift = int(self.config.shift_logits)
        at_zero = starts == 0
        if shift and bool(at_zero.any()) and not bool(at_zero.all()):
            return self._split_window(x, layout, rows, starts, width, cache, at_zero)
        shifted_from_zero = shift and bool(at_zero.all())
        first = starts if shifted_from_zero else starts - shift
        span = width if shifted_from_zero else width + shift
        q_slots = first[:, None] + torch.arange(span, device=x.device)
        tokens = torch.gather(x[rows], 1, q_slots)
        positions = (q_slots - layout.pad[rows][:, None]).clamp(min=0)
        k_slots = (torch.arange(layout.total, device=x.device).expand(len(rows), -1) if cache is not None
                   else q_slots)
        out = self(tokens, positions, self.attend(layout, rows, q_slots, k_slots), slots=q_slots, cache=cache)
        if shifted_from_zero:  # slot 0 has no predecessor and keeps its own output (as Dream's decoder does)
            return torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out[:, :width]

    def _split_window(self, x, layout, rows, starts, width, cache, at_zero) -> Tensor:
        """window_logits for a group whose windows start both at slot 0 and later (shifted logits): each part
        alone, stitched back in row order."""
        parts = []
        for part in (at_zero, ~at_zero):
            index = part.nonzero().squeeze(1)
            sub = None if cache is None else cache.rows(index)
            parts.append((index, self.window_logits(x, layout, rows[index], starts[index], width, sub)))
            if cache is not None:
                cache.put_rows(index, sub)
        out = torch.empty((len(rows), width, parts[0][1].shape[-1]), dtype=parts[0][1].dtype, device=x.device)
        for index, logits in parts:
            out[index] = logits
        return out

    def new_cache(self, batch: int, layout: Layout) -> KVCache:
        return KVCache.empty(self.config, batch, layout.total, self.device, self.model.embed.weight.dtype)
