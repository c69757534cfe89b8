"""A named parity check: passed or failed, with a message a person can act on and its measured value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Check:
    name: str
    passed: bool
    message: str
    value: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "value": self.value}
