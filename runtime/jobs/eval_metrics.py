"""Pure scoring of eval generations: no torch, no tokenizer, text in and outcomes out.

`score_sample(reference, text, markers)` scores one generation (the text after the prompt:
model output plus the injected reference tool result); `aggregate(outcomes)` turns per-sample
outcomes into `{"value", "n"}` metrics. The definitions are written down in docs/metrics.md;
a reference target scored against itself gets 1.0 on every rate and 0 control tool calls.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

# metric -> how per-sample outcomes combine ("mean": a rate or mean score, "count": how many are true)
METRICS = {
    "json_validity": "mean",
    "tool_selection": "mean",
    "integration_f1_lax": "mean",
    "integration_f1_strict": "mean",
    "privacy_ok_rate": "mean",
    "control_tool_calls": "count",
    "exact_match": "mean",
}

_NUMBER = r"\d+(?:\.\d+)?"
_LAX_TOKEN = re.compile(rf"{_NUMBER}|[^\W\d_]+")


@dataclass(frozen=True)
class Markers:
    tool_call_start: str
    tool_call_end: str
    tool_result_start: str
    tool_result_end: str
    think_end: str


@dataclass(frozen=True)
class Reference:
    kind: str
    target: str
    tool_call: dict | None
    integration: tuple[str, ...]
    pii: tuple[str, ...]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_call(body: str) -> tuple[dict | None, str | None]:
    """(the call, None) when `body` is a strict JSON object {"name": str, "arguments": object}, else (None, why)."""
    try:
        call = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        return None, f"bad_json: {exc}"
    if not isinstance(call, dict):
        return None, "bad_shape: not an object"
    if set(call) != {"name", "arguments"}:
        return None, f"bad_shape: keys {sorted(call)}"
    if not isinstance(call["name"], str):
        return None, "bad_shape: name is not a string"
    if not isinstance(call["arguments"], dict):
        return None, "bad_shape: arguments is not an object"
    return call, None


def first_call_body(text: str, markers: Markers) -> str | None:
    """The text between the first tool-call start marker and the next end marker, if both are there."""
    start = text.find(markers.tool_call_start)
    if start < 0:
        return None
    body_start = start + len(markers.tool_call_start)
    end = text.find(markers.tool_call_end, body_start)
    return None if end < 0 else text[body_start:end]


def has_tool_call(text: str, markers: Markers) -> bool:
    """Any tool-call marker at all: an attempted call counts, well-formed or not."""
    return markers.tool_call_start in text or markers.tool_call_end in text


def final_answer(text: str, markers: Markers) -> str:
    """After the last tool-result end marker, else after the last think end marker, else all of it."""
    for marker in (markers.tool_result_end, markers.think_end):
        at = text.rfind(marker)
        if at >= 0:
            return text[at + len(marker):]
    return text


def _canonical_number(s: str) -> str:
    whole, _, frac = s.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def lax_tokens(text: str) -> list[str]:
    """NFKC, casefold; runs of letters and numbers (canonical: 10.0 -> 10, 007 -> 7); the rest separates."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return [_canonical_number(t) if t[0].isdigit() else t for t in _LAX_TOKEN.findall(text)]


def best_window_f1(reference: list[str], answer: list[str]) -> float:
    """Max over contiguous windows of `answer` of SQuAD token F1 against `reference` (multiset overlap).

    F1 of a window of length w with c shared tokens is 2c / (w + r) <= 2r / (w + r), so windows
    longer than that bound allows cannot beat the best found so far and are not scanned."""
    r = len(reference)
    if not r or not answer:
        return 0.0
    want = Counter(reference)
    best = 0.0
    for i, tok in enumerate(answer):
        if tok not in want:
            continue  # a best window starts (and ends) on a shared token
        have: Counter = Counter()
        common = 0
        for j in range(i, len(answer)):
            w = j - i + 1
            if best and 2 * r / (w + r) <= best:
                break
            t = answer[j]
            if have[t] < want[t]:
                common += 1
            have[t] += 1
            if t in want:
                best = max(best, 2 * common / (w + r))
        if best == 1.0:
            break
    return best


def integration_scores(integration: tuple[str, ...], answer: str) -> tuple[float, float]:
    """(strict, lax) per-sample scores: the mean over reference strings of their best match in `answer`."""
    strict = [1.0 if ref in answer else 0.0 for ref in integration]
    answer_tokens = lax_tokens(answer)
    lax = []
    for ref in integration:
        ref_tokens = lax_tokens(ref)
        lax.append(best_window_f1(ref_tokens, answer_tokens) if ref_tokens else (1.0 if ref in answer else 0.0))
    return sum(strict) / len(strict), sum(lax) / len(lax)


def leaked_pii(pii: tuple[str, ...], text: str) -> list[str]:
    folded = text.casefold()
    return [p for p in pii if p.casefold() in folded]


def call_name(body: str) -> str | None:
    """The tool a call body selects: its "name" when the body is a JSON object with a string name."""
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return obj["name"] if isinstance(obj, dict) and isinstance(obj.get("name"), str) else None


def call_problem(text: str, body: str | None, call: dict | None, error: str | None, markers: Markers) -> str | None:
    """Why `text` fails json_validity, or None."""
    if body is None:
        return "unterminated_call" if has_tool_call(text, markers) else "no_call"
    if call is None:
        return error
    starts, ends = text.count(markers.tool_call_start), text.count(markers.tool_call_end)
    if starts != 1 or ends != 1:
        return f"not_exactly_one_call: {starts} start and {ends} end markers"
    return None


def score_sample(ref: Reference, text: str, markers: Markers) -> dict[str, Any]:
    """Per-metric outcome (None where the metric does not apply to this sample) and what was parsed."""
    outcome: dict[str, Any] = {name: None for name in METRICS}
    body = first_call_body(text, markers)
    call, error = parse_call(body) if body is not None else (None, None)
    problem = call_problem(text, body, call, error, markers)
    if ref.tool_call is not None:
        outcome["json_validity"] = problem is None
        outcome["tool_selection"] = body is not None and call_name(body) == ref.tool_call["name"]
    if ref.integration:
        strict, lax = integration_scores(ref.integration, final_answer(text, markers))
        outcome["integration_f1_strict"], outcome["integration_f1_lax"] = strict, lax
    leaks = leaked_pii(ref.pii, text)
    if ref.pii:
        outcome["privacy_ok_rate"] = not leaks
    if ref.kind == "control":
        outcome["control_tool_calls"] = has_tool_call(text, markers)
    outcome["exact_match"] = text == ref.target
    return {"outcome": outcome, "tool_call": call, "tool_call_problem": problem, "pii_leaked": leaks}


def aggregate(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{metric: {"value", "n"}} over the samples where each applies; a mean over no samples is None."""
    metrics: dict[str, dict[str, Any]] = {}
    for name, how in METRICS.items():
        values = [o[name] for o in outcomes if o[name] is not None]
        n = len(values)
        if how == "count":
            metrics[name] = {"value": int(sum(bool(v) for v in values)), "n": n}
        else:
            metrics[name] = {"value": (sum(float(v) for v in values) / n) if n else None, "n": n}
    return metrics
