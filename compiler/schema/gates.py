"""`gates`: release criteria evaluated against the metrics the jobs measure."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from .base import F, PosInt, SpecModel


class Gate(SpecModel):
    metric: str = F("A metric from the catalogue in docs/spec.md (e.g. eval.json_validity).")
    op: Literal[">=", ">", "<=", "<", "=="] = F("Comparison: metric op value passes.")
    value: Annotated[float, Field(allow_inf_nan=False)] = F("Threshold, in the metric's unit.")
    policy: Literal["hard", "warn"] = F("hard: a failed or unrun gate fails the run; warn: it is reported only.", default="hard")
    min_n: PosInt | None = F("Fewest samples for the measurement to count (eval metrics only).", unit="samples", default=None)
