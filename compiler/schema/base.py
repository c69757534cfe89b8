"""The one base for every spec model: unknown keys forbidden, frozen, strict types."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def F(description: str, *, unit: str | None = None, **kwargs: Any) -> Any:
    """A field with its documentation; `unit` shows up in the JSON Schema and docs/spec.md."""
    extra = {"unit": unit} if unit else None
    return Field(description=description, json_schema_extra=extra, **kwargs)


# Counts above 2**53 are not exact as floats (JSON tools, the float arithmetic of schedules and
# estimates): the loader's fuzzer found `training.steps` = 10**400 overflowing a float product.
MAX_INT = 2**53
PosInt = Annotated[int, Field(gt=0, le=MAX_INT)]
NonNegInt = Annotated[int, Field(ge=0, le=MAX_INT)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
