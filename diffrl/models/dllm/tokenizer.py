"""Tokenizers of the masked-diffusion LMs: the project's own character-level tokenizer (the tiny dLLMs; saved as
vocab.json beside the weights) and a wrapper over a checkpoint's own Hugging Face tokenizer (tokenizer.json, read
from the local directory only). Both give prompt ids, the ids of the special tokens the decoder needs (mask, pad,
end of answer) and the answer text of generated ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

VOCAB_FILE = "vocab.json"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>")


class Tokenizer(Protocol):
    mask_token_id: int
    pad_token_id: int
    eos_token_id: int

    def encode_prompt(self, text: str) -> list[int]: ...

    def decode_answer(self, ids: Sequence[int]) -> str: ...


class CharTokenizer:
    """One token per character of `alphabet`, after the special tokens <pad> <bos> <eos> <mask>. A prompt is
    <bos> + its characters; an answer is read up to its first <eos>."""

    def __init__(self, alphabet: str) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet: repeated characters in {alphabet!r}")
        self.alphabet = alphabet
        self.tokens = list(SPECIALS) + list(alphabet)
        self.ids = {token: index for index, token in enumerate(self.tokens)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.mask_token_id = range(4)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(self.alphabet))
        if unknown:
            raise ValueError(f"text has characters outside the tokenizer's alphabet {self.alphabet!r}: {unknown}")
        return [self.ids[ch] for ch in text]

    def encode_prompt(self, text: str) -> list[int]:
        return [self.bos_token_id] + self.encode(text)

    def decode_answer(self, ids: Sequence[int]) -> str:
        out = []
        for index in ids:
            if index == self.eos_token_id:
                break
            out.append(self.tokens[index] if index >= len(SPECIALS) else "")
        return "".join(out)

    def save(self, directory: Path) -> None:
        (directory / VOCAB_FILE).write_text(json.dumps({"type": "char", "alphabet": self.alphabet}) + "\n")

    @classmethod
    def load(cls, directory: Path) -> CharTokenizer:
        data = json.loads((directory / VOCAB_FILE).read_text())
        if data.get("type") != "char" or not isinstance(data.get("alphabet"), str):
            raise ValueError(f"{directory / VOCAB_FILE}: expected {{'type': 'char', 'alphabet': str}}")
        return cls(data["alphabet"])


class PretrainedTokenizer:
    """A checkpoint's Hugging Face tokenizer from its local directory (no download), with the mask token id of
    the model's config. The end of an answer is its first end-of-sequence token."""

    def __init__(self, directory: Path, mask_token_id: int) -> None:
        from transformers import AutoTokenizer

        self.inner = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.mask_token_id = mask_token_id
        self.eos_token_id = self.inner.eos_token_id
        self.pad_token_id = self.inner.pad_token_id if self.inner.pad_token_id is not None else self.eos_token_id

    def encode_prompt(self, text: str) -> list[int]:
        return list(self.inner(text)["input_ids"])

    def decode_answer(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.inner.decode([i for i in ids if i != self.mask_token_id], skip_special_tokens=True)


def load_tokenizer(directory: Path, mask_token_id: int) -> Tokenizer:
    """The project's vocab.json when the directory has one, else the checkpoint's Hugging Face tokenizer."""
    if (directory / VOCAB_FILE).exists():
        return CharTokenizer.load(directory)
    return PretrainedTokenizer(directory, mask_token_id)
