"""`teacher`: the model whose top-k logits the student is distilled from."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from .architecture import TeacherArchitecture
from .base import F, NonNegFloat, NonNegInt, PosFloat, PosInt, SpecModel


class LocalGeneration(SpecModel):
    max_tokens: PosInt = F("Most tokens the teacher writes per turn.", unit="tokens")
    temperature: NonNegFloat = F("Sampling temperature (0: greedy; sampling is seeded by training.seed).", default=0.0)
    tool_rounds: PosInt = F("Most rounds of tool calls answered from the prompt's fixtures; the teacher's final answer "
                            "follows them.", default=4, unit="rounds")
    batch: PosInt = F("Prompts generated together.", default=32, unit="prompts")
    max_failure_rate: float = F("Largest fraction of prompts allowed to fail (no fixture, unparseable call, out of rounds "
                                "or tokens) before the job fails.", default=0.1, ge=0, lt=1)


class TrainTeacher(SpecModel):
    kind: Literal["train"] = F("Train a small transformers Llama teacher inside the pipeline (toy and tests).")
    architecture: TeacherArchitecture = F("Teacher shape; vocabulary, norm, RoPE, context and embedding tying come from the student.")
    steps: PosInt = F("Teacher training steps.", unit="steps")
    micro_batch: PosInt = F("Sequences per teacher training step.", unit="sequences")
    seq_len: PosInt = F("Teacher training sequence length (<= architecture.max_context).", unit="tokens")
    lr: PosFloat = F("Teacher AdamW learning rate (cosine decay, no warmup).")
    top_k: PosInt = F("Teacher logits kept per position.", unit="logits")
    generation: Optional[LocalGeneration] = F("How the teacher answers data.prompts (required with them).", default=None)


class HfLocalTeacher(SpecModel):
    kind: Literal["hf_local"] = F("Load a transformers causal LM from a local folder (remote code off).")
    path: str = F("Model folder; relative paths are relative to the spec file.", unit="path")
    top_k: PosInt = F("Teacher logits kept per position.", unit="logits")
    generation: Optional[LocalGeneration] = F("How the teacher answers data.prompts (required with them).", default=None)


class Generation(SpecModel):
    max_tokens: PosInt = F("Most tokens the teacher writes per turn (also the budget's worst case per request).", unit="tokens")
    temperature: NonNegFloat = F("Sampling temperature sent with every request (0: greedy).", default=0.0)
    top_p: float = F("Nucleus sampling mass sent with every request.", default=1.0, gt=0, le=1)
    seed: Optional[NonNegInt] = F("Sampling seed sent with every request (servers that honour it repeat themselves).", default=None)


class Limits(SpecModel):
    in_flight: PosInt = F("Requests in flight at once.", default=16, unit="requests")
    requests_per_minute: Optional[PosFloat] = F("Request rate cap (a leaky bucket; none: unlimited).", default=None, unit="requests/min")
    tokens_per_minute: Optional[PosFloat] = F("Token rate cap, counted at each request's worst case (none: unlimited).", default=None,
                                              unit="tokens/min")


class UsdBudget(SpecModel):
    max_usd: PosFloat = F("Most dollars the job may spend, paid responses of earlier runs included.", unit="USD")
    usd_per_million_input: NonNegFloat = F("Price of a million prompt tokens.", unit="USD")
    usd_per_million_output: NonNegFloat = F("Price of a million completion tokens.", unit="USD")


class TokenBudget(SpecModel):
    max_tokens: PosInt = F("Most prompt + completion tokens the job may use, earlier runs included.", unit="tokens")


class OpenAICompatibleTeacher(SpecModel):
    kind: Literal["openai_compatible"] = F("An OpenAI-compatible chat-completions endpoint: a hosted API, a vLLM or an SGLang server (docs/teachers.md).")
    base_url: str = F("Endpoint base URL, ending in /v1.", unit="url", min_length=1)
    model: str = F("The model name at the endpoint, pinned to a version (the cache and the plan key on it).", min_length=1)
    api_key_env: str = F("Name of the environment variable holding the key; the key itself never appears in the spec, plan, cache or logs.",
                         pattern=r"^[A-Z_][A-Z0-9_]*$", default="OPENAI_API_KEY")
    token_ids: Literal["vllm", "sglang", "bytes"] = F(
        "How exact token ids come back: vllm (return_tokens_as_token_ids), sglang (return_meta_info), bytes (hosted APIs: "
        "each token's bytes mapped through `tokenizer`).")
    tokenizer: Optional[str] = F("Local folder holding the served model's tokenizer.json: needed for token_ids: bytes and for "
                                 "logit KD (its vocabulary must equal the student's).", default=None, unit="path")
    top_k: NonNegInt = F("Top logprobs kept per generated token (0-20; 0: sequence-level KD only).", le=20, unit="logits")
    generation: Generation = F("Generation settings sent with every request.")
    tool_rounds: PosInt = F("Most rounds of tool calls answered from the prompt's fixtures; the teacher's final answer "
                            "follows them (at most tool_rounds + 1 teacher turns).", default=4, unit="rounds")
    limits: Limits = F("Concurrency and rate limits.", default_factory=Limits)
    retries: NonNegInt = F("Retries of a transient failure (429, 5xx, timeout, reset), honouring Retry-After.", default=4, le=20)
    timeout_s: PosFloat = F("Seconds before a request times out.", default=120.0, unit="s")
    budget: Union[UsdBudget, TokenBudget] = F("The spend cap; never crossed, even with many requests in flight.")
    max_failure_rate: float = F("Largest fraction of prompts allowed to fail after retries before the job fails.",
                                default=0.02, ge=0, lt=1)


Teacher = Annotated[Union[TrainTeacher, HfLocalTeacher, OpenAICompatibleTeacher], Field(discriminator="kind")]
