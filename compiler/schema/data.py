"""`data`: the training and evaluation samples and the tool registry they call."""

from __future__ import annotations

from typing import Optional

from .base import F, SpecModel


class Data(SpecModel):
    train: str = F("Training samples (JSONL); relative to the spec file, or an absolute path or URI.", unit="path")
    eval: str = F("Evaluation samples (JSONL), never trained on.", unit="path")
    tool_registry: Optional[str] = F("Tool registry (JSON): tool names and their argument schemas. Required for a "
                                     "worker and a drafter; a judge has none (its rows call no tools).",
                                     default=None, unit="path")
    prompts: Optional[str] = F("Prompts for the teacher (JSONL, OpenAI chat format ending with a user turn; docs/chat_data.md): "
                               "the generate job writes the teacher's transcripts, which join the training split.",
                               default=None, unit="path")
