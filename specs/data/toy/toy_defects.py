"""Deliberately invalid train samples: the defects the dataset job must detect and drop."""

from __future__ import annotations

import json
import random
from typing import Any

from toy_samples import call_json, tool_target
from toy_world import Sample


# --------------------------------------------------------------------------
# Deliberately invalid train samples
# --------------------------------------------------------------------------

WRONG_NAMES = {
    "get_weather": "get_forecast",
    "convert_currency": "exchange_money",
    "set_timer": "start_alarm",
    "search_contacts": "find_person",
    "add_event": "create_meeting",
}
WRONG_TYPE_ARGS = {  # tool -> argument given the wrong JSON type
    "get_weather": "unit",
    "convert_currency": "amount",
    "set_timer": "minutes",
    "search_contacts": "query",
    "add_event": "hour",
}
DEFECTS = ("unknown_tool", "missing_required", "wrong_type", "bad_json")


def with_call(base: Sample, call: dict[str, Any], call_text: str | None = None) -> Sample:
    """Copy of ``base`` whose target calls ``call`` (rendered as ``call_text``)."""
    text = call_json(call) if call_text is None else call_text
    return {**base, "tool_call": call, "target": tool_target(base["_think"], text, base["tool_result"], base["_final"])}


def corrupt_json(text: str, rng: random.Random) -> str:
    """Make canonical call JSON unparsable in one of a few typical ways."""
    way = rng.randrange(4)
    if way == 0:
        bad = text[:-1]  # missing closing brace
    elif way == 1:
        bad = text.replace('"', "'")  # single quotes
    elif way == 2:
        bad = text.replace(',"name"', ',,"name"')  # doubled comma
    else:
        bad = text.replace('"name":', '"name" ')  # missing colon
    try:
        json.loads(bad)
    except json.JSONDecodeError:
        return bad
    raise AssertionError(f"corruption left valid JSON: {bad}")


def invalid_sample(base: Sample, defect: str, rng: random.Random) -> Sample:
    """Mutate a valid tool sample so that the dataset job must drop it."""
    name, args = base["tool_call"]["name"], base["tool_call"]["arguments"]
    if defect == "unknown_tool":
        return with_call(base, {"name": WRONG_NAMES[name], "arguments": args})
    if defect == "missing_required":
        dropped = rng.choice(sorted(args))
        return with_call(base, {"name": name, "arguments": {k: v for k, v in args.items() if k != dropped}})
    if defect == "wrong_type":
        arg = WRONG_TYPE_ARGS[name]
        value = [args[arg]] if isinstance(args[arg], str) else str(args[arg])  # array / quoted number
        return with_call(base, {"name": name, "arguments": {**args, arg: value}})
    # bad_json: the tool_call field stays the intended call; only the target is corrupted.
    return with_call(base, base["tool_call"], corrupt_json(call_json(base["tool_call"]), rng))
