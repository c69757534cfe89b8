"""`quantization`: the weight recipe per canonical module, and the KV-cache dtype."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag

from .base import F, PosInt, SpecModel

WeightDtype = Literal["int8", "uint8", "int4", "uint4"]
Granularity = Literal["per_tensor", "per_channel", "per_block"]
BITS = {"none": 16, "int8": 8, "uint8": 8, "int4": 4, "uint4": 4}


class Dense(SpecModel):
    dtype: Literal["none"] = F("No compression: the weight stays in the compute dtype.")


class Quantized(SpecModel):
    dtype: WeightDtype = F("Storage dtype of the linearly quantized weight.")
    granularity: Granularity = F("Scale granularity: one per tensor, per output channel, or per block of input features.")
    block_size: PosInt | None = F("Input features per scale; required for per_block and forbidden otherwise.", unit="features", default=None)


def _by_dtype(value):
    if isinstance(value, dict):
        return "dense" if value.get("dtype") == "none" else "quantized"
    return "dense" if isinstance(value, Dense) else "quantized"


WeightRecipe = Annotated[
    Union[Annotated[Dense, Tag("dense")], Annotated[Quantized, Tag("quantized")]],
    Discriminator(_by_dtype),
]


class DenseRule(Dense):
    match: str = F("Glob over canonical module names: '*' is one dotted segment, '**' any number.")


class QuantizedRule(Quantized):
    match: str = F("Glob over canonical module names: '*' is one dotted segment, '**' any number.")


Rule = Annotated[
    Union[Annotated[DenseRule, Tag("dense")], Annotated[QuantizedRule, Tag("quantized")]],
    Discriminator(_by_dtype),
]


class Weights(SpecModel):
    default: WeightRecipe = F("Recipe for every weight-bearing module no rule matches.")
    rules: list[Rule] = F("Ordered rules; the first match wins; a rule that matches no module is an error.")


class Quantization(SpecModel):
    kv_cache: Literal["fp16", "fp32"] = F("KV-cache dtype (sets KV bytes per token).")
    weights: Weights = F("Weight recipe.")
