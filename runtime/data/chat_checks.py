"""Validation of one chat sample in the OpenAI chat format (docs/chat_data.md): the first drop reason.

A sample is ``{"id", "messages", "tools", "kind", "pii", "fixtures"}``; ``messages`` are system / user /
assistant / tool turns in the OpenAI shape, ``tools`` OpenAI function definitions whose ``parameters``
are JSON Schema (Draft 2020-12). Ending with an assistant turn makes it ready-made (a transcript to
train on); ending with a user turn makes it a prompt for the teacher.

Reasons, checked in this order (``REASONS``): ``bad_schema``, ``duplicate_id``, ``pii_echoed``,
``unknown_tool``, ``bad_json``, ``schema_violation``, ``orphan_tool_result``, ``unanswered_call``,
``no_fixture``, ``control_with_tool_call``, ``tool_kind_without_call``. Also the integration rule's
text part (``integration_values``, ``integration_spans``). Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

REASONS = ("bad_schema", "duplicate_id", "pii_echoed", "unknown_tool", "bad_json", "schema_violation",
           "orphan_tool_result", "unanswered_call", "no_fixture", "control_with_tool_call", "tool_kind_without_call")
KINDS = ("tool", "control", "privacy")
ROLES = ("system", "user", "assistant", "tool")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
MIN_VALUE_CHARS = 2  # integration values shorter than this are ignored (single digits, one letter)
TRIVIAL_VALUES = frozenset({"true", "false", "null", "none", "yes", "no", "ok", "n/a"})
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
Span = tuple[int, int]


@dataclass(frozen=True)
class Drop:
    """Why a sample is dropped: ``reason`` is one of ``REASONS``, ``detail`` says where."""
    reason: str
    detail: str


class _Dropped(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.drop = Drop(reason, detail)


def _bad(detail: str) -> _Dropped:
    return _Dropped("bad_schema", detail)


def is_ready_made(sample: dict) -> bool:
    """True when the last turn is an assistant turn (a transcript), False for a prompt (last turn: user)."""
    return sample["messages"][-1]["role"] == "assistant"


def iter_calls(messages: list[dict]) -> Iterator[tuple[int, int, int, dict]]:
    """(call index over the conversation, message index, index within the turn, call) for every tool call."""
    k = 0
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            for j, call in enumerate(m.get("tool_calls") or []):
                yield k, i, j, call
                k += 1


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_arguments(text: str) -> Any:
    """``json.loads`` that refuses NaN / Infinity (they are not JSON); raises ValueError."""
    return json.loads(text, parse_constant=_no_constants)


def find_fixture(fixtures: dict, name: str, arguments: str) -> tuple[bool, Any]:
    """(found, result) for a call, as the generation engine answers it: the fixture keyed by the tool
    name, or, when that is a list of ``{"arguments", "result"}``, the entry whose arguments equal the call's."""
    if name not in fixtures:
        return False, None
    fixture = fixtures[name]
    if isinstance(fixture, list) and all(isinstance(f, dict) and "arguments" in f and "result" in f for f in fixture):
        try:
            args = parse_arguments(arguments)
        except ValueError:
            return False, None
        for f in fixture:
            if f["arguments"] == args:
                return True, f["result"]
        return False, None
    return True, fixture


def _where(k: int, i: int, j: int, name: Any) -> str:
    return f"call {k} (messages[{i}].tool_calls[{j}], {name!r})"


def _check_shape(sample: Any) -> dict[str, dict]:
    """Keys and types; returns tool name -> parameters schema."""
    if not isinstance(sample, dict):
        raise _bad("the sample is not a JSON object")
    if not isinstance(sample.get("id"), str) or not sample["id"]:
        raise _bad("'id' must be a non-empty string")
    if sample.get("kind") not in KINDS:
        raise _bad(f"'kind' must be one of {list(KINDS)}, got {sample.get('kind')!r}")
    for key, typ in (("messages", list), ("tools", list), ("pii", list), ("fixtures", dict)):
        if key in sample and not isinstance(sample[key], typ):
            raise _bad(f"'{key}' must be a {typ.__name__}")
    if not all(isinstance(p, str) and p for p in sample.get("pii", [])):
        raise _bad("'pii' must hold non-empty strings")
    tools: dict[str, dict] = {}
    for t, tool in enumerate(sample.get("tools", [])):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{t}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
        params = fn.get("parameters", EMPTY_PARAMETERS)
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as exc:
            raise _bad(f"tools[{t}] ({fn['name']}): parameters are not a valid JSON Schema: {exc.message}") from None
        if fn["name"] in tools:
            raise _bad(f"tools[{t}]: tool {fn['name']!r} defined twice")
        tools[fn["name"]] = params
    messages = sample.get("messages")
    if not messages:
        raise _bad("'messages' must be a non-empty list")
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}] must be an object with a role in {list(ROLES)}")
        role, content, calls = m["role"], m.get("content"), m.get("tool_calls")
        if role != "assistant" and calls is not None:
            raise _bad(f"messages[{i}]: only assistant turns carry tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise _bad(f"messages[{i}].tool_calls must be a list")
        for key in ("reasoning_content", "thinking", "reasoning"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise _bad(f"messages[{i}].{key} must be a string")
        if role == "assistant" and content is None and not calls:
            raise _bad(f"messages[{i}]: an assistant turn needs content or tool_calls")
        if not isinstance(content, str) and not (role == "assistant" and content is None):
            raise _bad(f"messages[{i}].content must be a string (content-part lists are not supported)")
        if role == "tool" and (not isinstance(m.get("tool_call_id"), str) or not m["tool_call_id"]):
            raise _bad(f"messages[{i}]: a tool turn needs a non-empty 'tool_call_id'")
        for j, call in enumerate(calls or []):
            fn = call.get("function") if isinstance(call, dict) and call.get("type", "function") == "function" else None
            if (not isinstance(call.get("id") if isinstance(call, dict) else None, str) or not call["id"]
                    or not isinstance(fn, dict) or not isinstance(fn.get("name"), str)
                    or not isinstance(fn.get("arguments"), str)):
                raise _bad(f"messages[{i}].tool_calls[{j}] must be {{'id': str, 'type': 'function', "
                           "'function': {'name': str, 'arguments': JSON string}}")
            if call["id"] in call_ids:
                raise _bad(f"messages[{i}].tool_calls[{j}]: call id {call['id']!r} used twice")
            call_ids.add(call["id"])
    if messages[-1]["role"] not in ("assistant", "user"):
        raise _bad(f"the last turn is a {messages[-1]['role']} turn: neither a transcript (ends with the assistant) "
                   "nor a prompt (ends with the user)")
    return tools


def _assistant_texts(m: dict) -> Iterator[str]:
    for key in ("content", "reasoning_content", "thinking", "reasoning"):
        if isinstance(m.get(key), str):
            yield m[key]
    for call in m.get("tool_calls") or []:
        yield call["function"]["name"]
        yield call["function"]["arguments"]
        try:  # the decoded form too: "\u00e9" in the JSON text is "é" in the value
            yield json.dumps(parse_arguments(call["function"]["arguments"]), ensure_ascii=False)
        except ValueError:
            pass


def _check_pii(sample: dict) -> None:
    pii = [p.casefold() for p in sample.get("pii", [])]
    for i, m in enumerate(sample["messages"]):
        if m["role"] != "assistant":
            continue
        for text in _assistant_texts(m):
            folded = text.casefold()
            for p, original in zip(pii, sample.get("pii", [])):
                if p in folded:
                    raise _Dropped("pii_echoed", f"messages[{i}] (assistant) contains pii {original!r}")


def _check_calls(messages: list[dict], tools: dict[str, dict], fixtures: dict) -> None:
    calls = list(iter_calls(messages))
    for k, i, j, call in calls:
        if call["function"]["name"] not in tools:
            raise _Dropped("unknown_tool", f"{_where(k, i, j, call['function']['name'])}: no such tool in 'tools'")
    for name in fixtures:
        if name not in tools:
            raise _Dropped("unknown_tool", f"fixtures[{name!r}]: no such tool in 'tools'")
    parsed = []
    for k, i, j, call in calls:
        try:
            parsed.append(parse_arguments(call["function"]["arguments"]))
        except ValueError as exc:
            raise _Dropped("bad_json", f"{_where(k, i, j, call['function']['name'])}: arguments are not JSON: {exc}")
    validators = {name: Draft202012Validator(schema) for name, schema in tools.items()}
    for (k, i, j, call), args in zip(calls, parsed):
        name = call["function"]["name"]
        try:
            err = best_match(validators[name].iter_errors(args))
        except Exception as exc:  # noqa: BLE001  (a $ref that does not resolve: nothing is fetched)
            raise _bad(f"tools ({name}): parameters cannot be evaluated: {type(exc).__name__}: {exc}") from None
        if err is None and not isinstance(args, dict):
            raise _Dropped("schema_violation", f"{_where(k, i, j, name)}: at $: arguments must be a JSON object")
        if err is not None:
            raise _Dropped("schema_violation", f"{_where(k, i, j, name)}: at {err.json_path}: {err.message}")


def _check_results(messages: list[dict]) -> None:
    """Tool turns answer the calls of the assistant turn right before them, each once, all of them."""
    pending: dict[str, int] = {}
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            if m["tool_call_id"] not in pending:
                raise _Dropped("orphan_tool_result", f"messages[{i}]: tool_call_id {m['tool_call_id']!r} matches no "
                                                     "unanswered call of the assistant turn before it")
            del pending[m["tool_call_id"]]
        else:
            pending = {c["id"]: i for c in m.get("tool_calls") or []}
    pending = {}
    for i, m in enumerate(messages + [{"role": "end"}]):
        if m["role"] == "tool":
            pending.pop(m["tool_call_id"], None)
            continue
        if pending:
            cid, at = next(iter(pending.items()))
            raise _Dropped("unanswered_call", f"messages[{at}]: call {cid!r} has no tool turn answering it")
        pending = {c["id"]: i for c in m.get("tool_calls") or []}


def validate_chat(sample: Any, seen: set[str] | None = None) -> Drop | None:
    """The first reason to drop ``sample`` (a ``Drop``), or None when it is fine. ``seen`` (ids met so far)
    is updated with the sample's id once its shape is valid, for ``duplicate_id``."""
    try:
        tools = _check_shape(sample)
        if seen is not None:
            if sample["id"] in seen:
                raise _Dropped("duplicate_id", f"id {sample['id']!r} seen before")
            seen.add(sample["id"])
        messages, fixtures = sample["messages"], sample.get("fixtures", {})
        _check_pii(sample)
        _check_calls(messages, tools, fixtures)
        _check_results(messages)
        calls = list(iter_calls(messages))
        if not is_ready_made(sample):
            for k, i, j, call in calls:
                if not find_fixture(fixtures, call["function"]["name"], call["function"]["arguments"])[0]:
                    raise _Dropped("no_fixture", f"{_where(k, i, j, call['function']['name'])}: no fixture answers it")
            if sample["kind"] == "tool" and not fixtures:
                raise _Dropped("no_fixture", "a 'tool' prompt without fixtures: no call the teacher makes can be answered")
        if calls and sample["kind"] == "control":
            k, i, j, call = calls[0]
            raise _Dropped("control_with_tool_call", f"{_where(k, i, j, call['function']['name'])} in a 'control' sample")
        if not calls and sample["kind"] == "tool" and is_ready_made(sample):
            raise _Dropped("tool_kind_without_call", "a ready-made 'tool' sample whose assistant turns call no tool")
    except _Dropped as exc:
        return exc.drop
    return None


# --------------------------------------------------------------------------------------------
# The integration rule (pure text; chat.find_spans places the spans in the rendered conversation)
# --------------------------------------------------------------------------------------------


def _leaves(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    elif isinstance(obj, str):
        yield obj.strip()
    elif isinstance(obj, int) and not isinstance(obj, bool):
        yield str(obj)
    elif isinstance(obj, float):
        yield json.dumps(obj)


def integration_values(messages: list[dict]) -> list[str]:
    """Values the final answer may restate: every string and number leaf of each tool result that parses
    as JSON (numbers as JSON writes them), else the result's stripped text and each digit run in it
    (``\\d+(\\.\\d+)?``); kept when at least ``MIN_VALUE_CHARS`` long, with a letter or digit, and not in
    ``TRIVIAL_VALUES`` (any case). Longest first."""
    values: set[str] = set()
    for m in messages:
        content = m.get("content") if m.get("role") == "tool" else None
        if not isinstance(content, str):
            continue
        try:
            leaves = list(_leaves(parse_arguments(content)))
        except ValueError:
            leaves = [content.strip()] + _NUMBER.findall(content)
        values.update(v for v in leaves if len(v) >= MIN_VALUE_CHARS and v.casefold() not in TRIVIAL_VALUES
                      and any(c.isalnum() for c in v))
    return sorted(values, key=lambda v: (-len(v), v))


def integration_spans(answer: str, values: list[str]) -> list[Span]:
    """Where ``answer`` restates a value: case-insensitive matches not touching a letter, digit or ``_`` on
    either side nor continuing a decimal number (``21`` is not found in ``121``, ``21.5`` or ``2,100``);
    overlapping matches merged (the maximal restated substrings)."""
    hits = []
    for v in values:
        pattern = re.compile(r"(?<!\w)(?<!\d[.,])" + re.escape(v) + r"(?!\w)(?![.,]\d)", re.IGNORECASE)
        hits += [(m.start(), m.end()) for m in pattern.finditer(answer)]
    merged: list[list[int]] = []
    for a, b in sorted(hits):
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]
