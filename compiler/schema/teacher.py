"""`teacher`: the model whose top-k logits the student is distilled from."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .architecture import TeacherArchitecture
from .base import F, PosFloat, PosInt, SpecModel


class TrainTeacher(SpecModel):
    kind: Literal["train"] = F("Train a small transformers Llama teacher inside the pipeline (toy and tests).")
    architecture: TeacherArchitecture = F("Teacher shape; vocabulary, norm, RoPE, context and embedding tying come from the student.")
    steps: PosInt = F("Teacher training steps.", unit="steps")
    micro_batch: PosInt = F("Sequences per teacher training step.", unit="sequences")
    seq_len: PosInt = F("Teacher training sequence length (<= architecture.max_context).", unit="tokens")
    lr: PosFloat = F("Teacher AdamW learning rate (cosine decay, no warmup).")
    top_k: PosInt = F("Teacher logits kept per position.", unit="logits")


class HfLocalTeacher(SpecModel):
    kind: Literal["hf_local"] = F("Load a transformers causal LM from a local folder (remote code off).")
    path: str = F("Model folder; relative paths are relative to the spec file.", unit="path")
    top_k: PosInt = F("Teacher logits kept per position.", unit="logits")


class OpenAICompatibleTeacher(SpecModel):
    kind: Literal["openai_compatible"] = F("An HTTP endpoint with logprobs (reserved; not supported by this version).")
    base_url: str = F("Endpoint base URL.", unit="url")
    model: str = F("Model name at the endpoint.")
    top_k: PosInt = F("Logprobs kept per position.", unit="logits")


Teacher = Annotated[Union[TrainTeacher, HfLocalTeacher, OpenAICompatibleTeacher], Field(discriminator="kind")]
