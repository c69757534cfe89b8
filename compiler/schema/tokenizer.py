"""`tokenizer`: where the tokenizer comes from and the exact ids of its special tokens."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from .base import F, NonNegInt, PosInt, SpecModel


# The special tokens the eval job reads, for every role: it generates with tool calls answered from
# the samples and scores what follows `think_end` (the validator requires them: never a late failure).
EVAL_MARKERS = ("tool_call_start", "tool_call_end", "tool_result_start", "tool_result_end", "think_end")

class BpeSource(SpecModel):
    kind: Literal["bpe"] = F("Train a byte-level BPE tokenizer from a corpus.")
    corpus: str = F("Training corpus; relative paths are relative to the spec file.", unit="path")
    vocab_size: PosInt = F("Size of the trained vocabulary, special tokens included (<= architecture.vocab_size).", unit="tokens")


class PretrainedSource(SpecModel):
    kind: Literal["pretrained"] = F("Load a transformers fast tokenizer from a local folder (remote code off).")
    path: str = F("Folder holding tokenizer.json; relative paths are relative to the spec file.", unit="path")


TokenizerSource = Annotated[Union[BpeSource, PretrainedSource], Field(discriminator="kind")]


class SpecialToken(SpecModel):
    text: str = F("Literal text of the token; must encode to exactly one token.", min_length=1, max_length=64)
    id: NonNegInt = F("Exact token id; unique and below architecture.vocab_size.", unit="token id")


class Tokenizer(SpecModel):
    source: TokenizerSource = F("Where the tokenizer comes from (discriminated by kind).")
    special_tokens: dict[str, SpecialToken] = F(
        "Special tokens by role name; pad, bos and eos are required, and for every role the tokens the eval job "
        "reads: tool_call_start, tool_call_end, tool_result_start, tool_result_end, think_end."
    )
    chat_template: Optional[str] = F(
        "Jinja chat template file (transformers' format) installed in the tokenizer; relative paths are relative to the "
        "spec file. None: a pretrained tokenizer's own template. Every chat sample is rendered with it, and it ships in "
        "the package metadata and the release.", default=None, unit="path")
