"""Sections only some roles have: `speculative` (a drafter and the worker it drafts for)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import F, PosInt, SpecModel


class Speculative(SpecModel):
    k: Annotated[int, Field(ge=1, le=16)] = F(
        "Tokens the drafter proposes per worker call in speculative decoding.", unit="tokens")
    max_new_tokens: PosInt = F("Tokens generated per eval prompt when measuring acceptance.", unit="tokens", default=64)
    prompts: PosInt = F("Eval prompts measured (the first, in row order).", default=64)
