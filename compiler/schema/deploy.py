"""`shapes`, `precision`, `export` and `deployment`: what the package looks like and where it runs."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag

from .base import F, PosFloat, PosInt, SpecModel

ISLAND_OPS = (
    "add", "concat", "cos", "exp", "gather", "linear", "matmul", "mul", "pow", "real_div",
    "reduce_mean", "reduce_sum", "rsqrt", "sigmoid", "silu", "sin", "softmax", "sqrt", "sub",
)


class DecodeOn(SpecModel):
    enabled: Literal[True] = F("Export a one-token decode function with a KV cache.")
    cache_len: PosInt = F("KV-cache length (<= architecture.max_context).", unit="tokens")
    verify_k: Optional[Annotated[int, Field(ge=1, le=16)]] = F(
        "Also export `verify`: the last accepted token plus k drafted tokens written to the cache and scored in one call, "
        "for speculative decoding with a drafter (docs/roles.md: cache semantics of a rejected draft).", unit="tokens",
        default=None)


class DecodeOff(SpecModel):
    enabled: Literal[False] = F("No decode function.")


class Shapes(SpecModel):
    batch: Literal[1] = F("Batch size of every exported function (on-device inference is batch 1).")
    prefill: Annotated[list[PosInt], Field(min_length=1)] = F("Enumerated prefill lengths: unique, ascending, <= max_context.", unit="tokens")
    decode: Annotated[Union[DecodeOn, DecodeOff], Field(discriminator="enabled")] = F("Decode function.")


class ModuleIsland(SpecModel):
    module: str = F("Glob over canonical module names whose ops compute in fp32.")
    reason: str = F("Why this island exists (documentation; changes no job).")


class OpIsland(SpecModel):
    op: Literal[ISLAND_OPS] = F("MIL op kind that computes in fp32 everywhere.")  # type: ignore[valid-type]
    reason: str = F("Why this island exists (documentation; changes no job).")


def _island_tag(value):
    if isinstance(value, dict):
        return "op" if "op" in value else "module"
    return "op" if isinstance(value, OpIsland) else "module"


Island = Annotated[Union[Annotated[ModuleIsland, Tag("module")], Annotated[OpIsland, Tag("op")]], Discriminator(_island_tag)]


class Precision(SpecModel):
    compute: Literal["fp16", "fp32"] = F("Compute dtype of the package outside islands (also activations and logits).")
    islands: list[Island] = F("What must stay fp32, by module glob or op kind.")


DEFAULT_AUTHOR = "modelspec"
DEFAULT_LICENSE = "unspecified"


class PackageMetadata(SpecModel):
    author: Annotated[str, Field(min_length=1, max_length=200)] = F(
        "Author shown in the package's metadata (Xcode's model viewer).", default=DEFAULT_AUTHOR)
    license: Annotated[str, Field(min_length=1, max_length=200)] = F(
        "License shown in the package's metadata: an SPDX id or a short text.", default=DEFAULT_LICENSE)


class CoreML(SpecModel):
    target: Literal["macOS15", "iOS18"] = F("minimum_deployment_target; macOS15/iOS18 are needed for states, multifunction and several enumerated inputs.")
    compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = F("Compute units recorded for loading.")
    packaging: Literal["multifunction", "enumerated"] = F(
        "multifunction: one function per prefill shape plus decode, sharing weights; "
        "enumerated: one prefill function with enumerated shapes plus decode."
    )
    decode_cache: Literal["state", "explicit"] = F("KV cache as CoreML states (StateType) or as explicit inputs and outputs.")
    metadata: PackageMetadata | None = F(
        "The package's standard metadata besides version (the spec's `version`) and short description (the "
        f"spec's `description`); absent: author `{DEFAULT_AUTHOR}`, license `{DEFAULT_LICENSE}`.", default=None)


class ParityRun(SpecModel):
    """What the parity jobs run in the reference interpreter (a numpy interpreter, on CPU).

    The defaults hold a 1B package to a few minutes and a few GiB on a laptop-class machine
    (bench/results/verify_1b.json); widen them where the time is there."""

    lengths: Union[Literal["smallest", "all"], Annotated[list[PosInt], Field(min_length=1)]] = F(
        "Prefill lengths run against torch: `smallest`, `all`, or a list of `shapes.prefill` entries. A length not "
        "run is still checked by `verify` (its inputs, outputs, ops and weights, shared with the lengths that run).",
        default="smallest")
    samples: PosInt = F("Seeded token sequences per length, some right-padded.", unit="sequences", default=4)
    positions: Union[Literal["all"], PosInt] = F(
        "Logit positions compared (and kept in golden.npz) per sample: evenly spaced, the first and the last real "
        "token always among them; `all`: every real position.", unit="positions", default=64)
    decode_steps: PosInt = F("Decode steps per sample of the decode function, and after the prefill in the "
                             "prefill-then-decode check.", unit="steps", default=8)


class Export(SpecModel):
    coreml: CoreML = F("CoreML conversion.")
    parity: ParityRun = F("What the parity jobs run in the reference interpreter: lengths, samples, compared positions "
                          "and decode steps.", default_factory=ParityRun)


class Profile(SpecModel):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)] = F("Profile name.")
    memory_gb: PosFloat = F("Memory the model may use on this device (weights plus KV caches).", unit="GiB")
    sessions: PosInt = F("Concurrent sessions, each with its own KV cache.")
    context: PosInt = F("Context per session (<= architecture.max_context).", unit="tokens")
    chip: Optional[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]] = F(
        "The Apple chip of this device (e.g. apple-m1-max; docs/speed.md lists them): speed reports must come from it, "
        "and speed gates its memory bandwidth and compute rule out are refused at compile time.", default=None)


class Deployment(SpecModel):
    profiles: Annotated[list[Profile], Field(min_length=1)] = F("Devices the model must fit.")
