"""The whole spec as written: one pydantic model mirroring the YAML."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from .architecture import Architecture
from .base import F, SpecModel
from .data import Data
from .deploy import Deployment, Export, Precision, Shapes
from .gates import Gate
from .quantization import Quantization
from .roles import Halt, Judge, Speculative
from .teacher import Teacher
from .tokenizer import Tokenizer
from .training import Training

SUPPORTED_FORMATS = (1,)
SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"


class Spec(SpecModel):
    modelspec: int = F("Format version of this file; this compiler supports 1.")
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)] = F("Model name; used in output paths.")
    version: Annotated[str, Field(pattern=SEMVER, max_length=64)] = F(
        "The spec's own semver; a breaking change needs a major bump. Also the package's version metadata.")
    role: Literal["worker", "judge", "drafter"] = F("What the model does in the system.")
    description: Annotated[str, Field(max_length=2000)] = F(
        "Free text for people; also the package's short description (Xcode's model viewer), so changing it rebuilds the package.")
    drafts_for: Optional[Annotated[str, Field(min_length=1, max_length=1024)]] = F(
        "role drafter: the worker spec this model drafts tokens for (a path relative to this spec). The compiler checks "
        "that the pair shares tokenizer source, special tokens, vocabulary and chat template, and that the drafter's "
        "context fits the worker's; both generated READMEs name the pair.", default=None)
    speculative: Optional[Speculative] = F(
        "role drafter with drafts_for: measure greedy speculative decoding against the worker (the drafter's teacher) "
        "in the speculate job: acceptance rate and tokens per worker call, gated as speculate.*.", default=None)
    judge: Optional[Judge] = F(
        "role judge: the clauses it labels and its pairwise objective; the model gains a verdict head (the score and "
        "one logit per clause) exported as the prefill's `judge` output (docs/roles.md#judge).", default=None)
    halt: Optional[Halt] = F(
        "A halt head: one logit per position predicting that the next token ends the turn (eos or the tool-call end), "
        "trained by training.losses.halt on the data's turn ends and exported as each function's `halt` output "
        "(docs/roles.md#the-halt-head). Worker or drafter, with decode_cache: state.", default=None)
    architecture: Architecture = F("Student architecture.")
    tokenizer: Tokenizer = F("Tokenizer.")
    teacher: Optional[Teacher] = F(
        "Teacher (discriminated by kind). Required for worker and drafter; a judge has none: it distils from the teacher "
        "verdicts written in its data rows (docs/roles.md#judge-data).", default=None)
    data: Data = F("Data files.")
    training: Training = F("KD training and QAT.")
    quantization: Quantization = F("Quantization recipe.")
    shapes: Shapes = F("Exported shapes.")
    precision: Precision = F("Compute precision and fp32 islands.")
    export: Export = F("Export and conversion settings.")
    deployment: Deployment = F("Deployment profiles.")
    gates: list[Gate] = F("Release gates.")
