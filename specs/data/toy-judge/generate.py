"""Deterministic judge data for the toy judge (specs/toy-judge.yaml), built from the toy worker's samples.

Running ``python specs/data/toy-judge/generate.py`` rewrites ``train.jsonl`` and ``eval.jsonl`` next to this
file from ``../toy/train.jsonl`` and ``../toy/eval.jsonl`` (the row format is docs/roles.md#judge-data).
Standard library only; the one ``random.Random(SEED)`` makes every run byte-identical.

Clauses: ``privacy`` (the response repeats the user's personal data) and ``format`` (the response's tool call
is not valid JSON, names a tool that does not exist, or is made where the question needs no tool). Each valid toy sample gives:

- a preference pair: chosen = the sample's own response (its tool call, or its final answer when it calls no
  tool), rejected = the same response with one defect: the personal data echoed (privacy samples), the call's
  JSON broken or its tool renamed (tool samples), or a needless tool call instead of the answer (control samples);
- a clause row for the chosen or the rejected response (alternating), labelled with the clauses it violates.

Every third pair and every third clause row carries teacher probabilities (a confident teacher that is right
90% of the time), for the verdict_kd term.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20261204
HERE = Path(__file__).resolve().parent
TOY = HERE.parent / "toy"
WRONG_NAMES = {"get_weather": "get_forecast", "convert_currency": "exchange_money", "set_timer": "start_alarm",
               "search_contacts": "find_person", "add_event": "create_meeting"}


def _call(sample: dict) -> str:
    return "<tool_call>" + json.dumps(sample["tool_call"], sort_keys=True, separators=(",", ":")) + "</tool_call>"


def _answer(sample: dict) -> str:
    return sample["target"].rsplit("</tool_result>", 1)[-1].split("</think>")[-1]


def _broken(call: str, rng: random.Random) -> str:
    body = call[len("<tool_call>"):-len("</tool_call>")]
    way = rng.randrange(3)
    if way == 0:
        bad = body[:-1]
    elif way == 1:
        bad = body.replace('"', "'")
    else:
        bad = body.replace('"name":', '"name" ')
    return "<tool_call>" + bad + "</tool_call>"


def pair_of(sample: dict, rng: random.Random) -> tuple[str, str, list[str]] | None:
    """(chosen, rejected, clauses the rejected violates), or None for a sample this data skips."""
    if sample["kind"] == "privacy" and sample["pii"]:
        chosen = _answer(sample)
        return chosen, f"Noted, {sample['pii'][0]}. " + chosen, ["privacy"]
    if sample["kind"] == "tool" and sample.get("tool_call"):
        chosen = _call(sample)
        if rng.random() < 0.5:
            return chosen, _broken(chosen, rng), ["format"]
        name = sample["tool_call"]["name"]
        return chosen, chosen.replace(f'"name":"{name}"', f'"name":"{WRONG_NAMES[name]}"'), ["format"]
    if sample["kind"] == "control":  # a question that needs no tool: the rejected answer calls one anyway
        chosen = _answer(sample)
        name = sorted(WRONG_NAMES)[rng.randrange(len(WRONG_NAMES))]
        return chosen, '<tool_call>{"arguments":{},"name":"%s"}</tool_call>' % name, ["format"]
    return None


def build(samples: list[dict], prefix: str, rng: random.Random) -> list[dict]:
    rows = []
    for i, sample in enumerate(samples):
        made = pair_of(sample, rng)
        if made is None:
            continue
        chosen, rejected, violated = made
        pair = {"id": f"{prefix}-pair-{i:05d}", "kind": "pairwise", "prompt": sample["prompt"], "chosen": chosen,
                "rejected": rejected}
        if i % 3 == 0:
            pair["teacher"] = {"preference": 0.9 if rng.random() < 0.9 else 0.2}
        rows.append(pair)
        bad = i % 2 == 1
        clause = {"id": f"{prefix}-clauses-{i:05d}", "kind": "clauses", "prompt": sample["prompt"],
                  "response": rejected if bad else chosen, "labels": violated if bad else []}
        if i % 3 == 1:
            clause["teacher"] = {"clauses": {c: (0.9 if c in clause["labels"] else 0.05) for c in ("privacy", "format")}}
        rows.append(clause)
    return rows


def valid(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        call = s.get("tool_call")
        if call is not None and (call["name"] not in WRONG_NAMES or "<tool_call>" + json.dumps(
                call, sort_keys=True, separators=(",", ":")) not in s["target"]):
            continue  # the toy's deliberately invalid samples
        out.append(s)
    return out


def main(out_dir: Path = HERE) -> None:
    rng = random.Random(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, limit in (("train", 900), ("eval", 120)):
        rows = build(valid(TOY / f"{name}.jsonl")[:limit], name, rng)
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
