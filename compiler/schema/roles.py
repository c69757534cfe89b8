"""Sections only some roles have: `speculative` (a drafter and the worker it drafts for), `judge` (the
clauses a judge labels and its pairwise objective) and `halt` (a decoder's stop head)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import F, PosInt, SpecModel


class Speculative(SpecModel):
    k: Annotated[int, Field(ge=1, le=16)] = F(
        "Tokens the drafter proposes per worker call in speculative decoding.", unit="tokens")
    max_new_tokens: PosInt = F("Tokens generated per eval prompt when measuring acceptance.", unit="tokens", default=64)
    prompts: PosInt = F("Eval prompts measured (the first, in row order).", default=64)


ClauseName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class Judge(SpecModel):
    clauses: Annotated[list[ClauseName], Field(min_length=1, max_length=64)] = F(
        "The constitution's clause names: the judge labels which of them a response violates (multi-label), "
        "and the data's clause labels must use these names (docs/roles.md#judge-data).")
    objective: Literal["bradley_terry", "margin"] = F(
        "Pairwise objective on the verdict score s (the log-odds that response A beats B): bradley_terry, "
        "-log sigmoid(s) for the preferred order; margin, max(0, margin - s).", default="bradley_terry")
    margin: Annotated[float, Field(gt=0, allow_inf_nan=False)] = F(
        "The hinge of the margin objective (unused by bradley_terry).", default=1.0)


class Halt(SpecModel):
    threshold: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = F(
        "The halt probability at which a decoder stops (a drafter stops drafting): the early-halt metric counts "
        "eval samples where it is reached before a stop token, and the release's runtime config tells apps.",
        unit="probability", default=0.5)
