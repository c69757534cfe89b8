"""A judge's rows: preference pairs and clause labels, validated, laid out as text and tokenized.

The data format (docs/roles.md#judge-data), one JSON object per line of `data.train` / `data.eval`:

    {"id": "p1", "kind": "pairwise", "prompt": "...", "chosen": "...", "rejected": "...",
     "teacher": {"preference": 0.9}}                        # teacher: optional, P(chosen beats rejected)
    {"id": "c1", "kind": "clauses", "prompt": "...", "response": "...", "labels": ["privacy"],
     "teacher": {"clauses": {"privacy": 0.8, "accuracy": 0.1}}}   # labels: the clauses the response violates

Layout (`LAYOUT_VERSION` 1; the release's runtime config repeats it so an app renders the same text):
a pair is `PAIR` with A and B filled in, a clause row is `SINGLE`; tokens are `[bos] + text + [eos]`
and the verdict is read at the last token (the eos). Every pair becomes two rows, one per order
(chosen as A, then chosen as B), so the judge learns the verdict in both positions and the eval can
measure position bias.

Each row's `judge` vector (float32, `-1` where a value is not given) is
`[verdict position, preference target, teacher preference, clause labels x C, teacher clauses x C]`,
the preference being P(A beats B) for the row's order (1 / 0 for a labelled pair).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LAYOUT_VERSION = 1
PAIR = "Prompt:\n{prompt}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\nVerdict:"
SINGLE = "Prompt:\n{prompt}\n\nResponse:\n{response}\n\nClauses:"
KINDS = ("pairwise", "clauses")
# The verdict JSON an app builds from the head's outputs (runtime/jobs/eval_judge.verdict_json); the release's
# runtime config publishes it and the eval validates every verdict against it.
VERDICT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "preferred": {"enum": ["A", "B"]},
        "p_a_better": {"type": "number", "minimum": 0, "maximum": 1},
        "clauses": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
        "violated": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["clauses", "violated"],
    "additionalProperties": False,
}
REASONS = ("bad_line", "bad_schema", "duplicate_id", "unknown_clause", "bad_probability", "identical_responses")


def width(clauses: int) -> int:
    """Length of a row's `judge` vector."""
    return 3 + 2 * clauses


def layout(clauses: list[str]) -> dict[str, Any]:
    """How an app renders the judge's input and reads its output (the release's runtime config)."""
    return {"version": LAYOUT_VERSION, "pair": PAIR, "single": SINGLE, "tokens": "[bos] + text + [eos]",
            "read_at": "the last token", "outputs": ["score"] + [f"clause:{c}" for c in clauses],
            "score": "log-odds that response A beats response B", "clause": "log-odds that the response violates it"}


def _prob(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0.0 <= x <= 1.0


def _text(x: Any) -> bool:
    """A non-empty string that encodes as UTF-8 (JSON can spell a lone surrogate, which no tokenizer takes)."""
    if not isinstance(x, str) or not x:
        return False
    try:
        x.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_row(sample: Any, clauses: list[str], seen: set[str]) -> str | None:
    """The first reason (REASONS) to drop a row, or None; a kept row's id joins `seen`."""
    if not isinstance(sample, dict):
        return "bad_line"
    sid, kind = sample.get("id"), sample.get("kind")
    texts = ("prompt", "chosen", "rejected") if kind == "pairwise" else ("prompt", "response")
    allowed = {"id", "kind", "teacher", "meta"} | set(texts) | ({"labels"} if kind == "clauses" else set())
    if not _text(sid) or kind not in KINDS or set(sample) - allowed:
        return "bad_schema"
    if any(not _text(sample.get(k)) for k in texts):
        return "bad_schema"
    teacher = sample.get("teacher")
    if teacher is not None and not isinstance(teacher, dict):
        return "bad_schema"
    if kind == "clauses":
        labels = sample.get("labels")
        if not isinstance(labels, list) or not all(_text(x) for x in labels):
            return "bad_schema"
    if sid in seen:
        return "duplicate_id"
    reason = _pairwise(sample, teacher) if kind == "pairwise" else _clauses(sample, teacher, clauses)
    if reason is None:
        seen.add(sid)
    return reason


def _pairwise(sample: dict, teacher: Any) -> str | None:
    if sample["chosen"] == sample["rejected"]:
        return "identical_responses"
    if teacher is not None and (set(teacher) - {"preference"} or not _prob(teacher.get("preference"))):
        return "bad_probability"
    return None


def _clauses(sample: dict, teacher: Any, clauses: list[str]) -> str | None:
    if set(sample["labels"]) - set(clauses):
        return "unknown_clause"
    if teacher is not None:
        probs = teacher.get("clauses")
        if set(teacher) - {"clauses"} or not isinstance(probs, dict):
            return "bad_probability"
        if set(probs) - set(clauses):
            return "unknown_clause"
        if not all(_prob(p) for p in probs.values()):
            return "bad_probability"
    return None


def rows_of(sample: dict, clauses: list[str]) -> list[tuple[str, dict[str, Any], np.ndarray]]:
    """(text, metadata, judge vector without the position) per row the sample becomes."""
    c = len(clauses)
    teacher = sample.get("teacher") or {}
    if sample["kind"] == "pairwise":
        p = teacher.get("preference")
        out = []
        for order, (a, b) in enumerate(((sample["chosen"], sample["rejected"]), (sample["rejected"], sample["chosen"]))):
            vec = np.full(width(c), -1.0, dtype=np.float32)
            vec[1] = 1.0 - order
            if p is not None:
                vec[2] = p if order == 0 else 1.0 - p
            out.append((PAIR.format(prompt=sample["prompt"], a=a, b=b),
                        {"id": sample["id"], "kind": "pairwise", "pair": sample["id"], "order": order}, vec))
        return out
    vec = np.full(width(c), -1.0, dtype=np.float32)
    labels = set(sample["labels"])
    vec[3:3 + c] = [1.0 if name in labels else 0.0 for name in clauses]
    for i, name in enumerate(clauses):
        if name in (teacher.get("clauses") or {}):
            vec[3 + c + i] = float(teacher["clauses"][name])
    return [(SINGLE.format(prompt=sample["prompt"], response=sample["response"]),
             {"id": sample["id"], "kind": "clauses", "labels": sorted(labels)}, vec)]
