"""Checks on the toy tool-calling dataset in specs/data/toy/.

The committed files must be exactly what ``generate.py`` writes, and their
contents must follow the sample schema: valid tool calls that match the
registry, no personal data in targets, integration strings in the final
answer, the stated kind mix, and 2-5% deliberately invalid train samples.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

TOY = Path(__file__).resolve().parents[1] / "specs" / "data" / "toy"
OUTPUTS = ("tools.json", "train.jsonl", "eval.jsonl", "corpus.txt", "README.md", "prompts.jsonl")
KEYS = {"id", "kind", "prompt", "target", "tool_call", "tool_result", "integration", "pii"}
MIX = {"tool": 0.70, "control": 0.15, "privacy": 0.15}
MIX_TOLERANCE = 0.05
JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
TOOL_TARGET = re.compile(
    r"<think>([^<]+)</think><tool_call>(.*)</tool_call><tool_result>([^<]+)</tool_result>([^<]+)", re.DOTALL
)
CHAT_TARGET = re.compile(r"<think>([^<]+)</think>([^<]+)")
DEFECT_KINDS = {"unknown_tool", "missing_required", "wrong_type", "bad_json"}


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def registry() -> dict[str, dict[str, Any]]:
    tools = json.loads((TOY / "tools.json").read_text(encoding="utf-8"))["tools"]
    return {tool["name"]: tool["parameters"] for tool in tools}


@pytest.fixture(scope="module")
def train() -> list[dict[str, Any]]:
    return load_jsonl(TOY / "train.jsonl")


@pytest.fixture(scope="module")
def eval_set() -> list[dict[str, Any]]:
    return load_jsonl(TOY / "eval.jsonl")


@pytest.fixture(scope="module", params=["train", "eval"])
def split(request, train, eval_set) -> list[dict[str, Any]]:
    return train if request.param == "train" else eval_set


def defects(sample: dict[str, Any], registry: dict[str, dict[str, Any]]) -> list[str]:
    """Why the dataset job must drop this sample (empty when it is valid)."""
    call = sample["tool_call"]
    if call is None:
        return []
    match = TOOL_TARGET.fullmatch(sample["target"])
    assert match, sample["id"]
    try:
        parsed = json.loads(match.group(2))
    except json.JSONDecodeError:
        return ["bad_json"]
    if parsed != call:
        return ["mismatch"]
    params = registry.get(call["name"])
    if params is None:
        return ["unknown_tool"]
    found = []
    args = call["arguments"]
    if any(arg not in args for arg in params["required"]):
        found.append("missing_required")
    for arg, value in args.items():
        spec = params["properties"].get(arg)
        if spec is None:
            found.append("unknown_argument")
        elif not JSON_TYPES[spec["type"]](value):
            found.append("wrong_type")
    return found


def load_generator():
    spec = importlib.util.spec_from_file_location("toy_generate", TOY / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_committed_files(tmp_path):
    load_generator().main(tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (TOY / name).read_bytes(), name


def test_generator_cli_writes_to_given_dir(tmp_path):
    subprocess.run([sys.executable, str(TOY / "generate.py"), str(tmp_path)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS)
    assert (tmp_path / "train.jsonl").read_bytes() == (TOY / "train.jsonl").read_bytes()


def test_registry_shape(registry):
    assert len(registry) == 5
    for params in registry.values():
        assert params["type"] == "object"
        assert params["required"] and set(params["required"]) <= set(params["properties"])
        assert all(spec["type"] in JSON_TYPES for spec in params["properties"].values())


def test_line_format_and_ids(split):
    prefix = split[0]["id"].split("-")[0]
    assert prefix in {"train", "eval"}
    for i, sample in enumerate(split, start=1):
        assert set(sample) == KEYS
        assert sample["id"] == f"{prefix}-{i:05d}"
        assert sample["kind"] in MIX
        assert isinstance(sample["integration"], list) and isinstance(sample["pii"], list)
    raw = (TOY / f"{prefix}.jsonl").read_text(encoding="utf-8").splitlines()
    assert raw == [json.dumps(s, sort_keys=True, separators=(",", ":")) for s in split]


def test_sizes(train, eval_set):
    assert 1100 <= len(train) <= 1300
    assert 100 <= len(eval_set) <= 140


def test_kind_mix(split):
    counts = Counter(sample["kind"] for sample in split)
    for kind, share in MIX.items():
        assert abs(counts[kind] / len(split) - share) <= MIX_TOLERANCE, (kind, counts)


def test_target_structure(split):
    for sample in split:
        assert len(sample["target"]) <= 200, sample["id"]
        if sample["tool_call"] is None:
            assert sample["kind"] in {"control", "privacy"}
            assert CHAT_TARGET.fullmatch(sample["target"]), sample["id"]
            assert sample["tool_result"] is None and sample["integration"] == []
        else:
            assert sample["kind"] in {"tool", "privacy"}
            match = TOOL_TARGET.fullmatch(sample["target"])
            assert match, sample["id"]
            assert match.group(3) == sample["tool_result"]
            assert sample["integration"], sample["id"]


def test_control_samples_never_call_tools(split):
    for sample in split:
        if sample["kind"] == "control":
            assert sample["tool_call"] is None and "<tool_call>" not in sample["target"]
            assert sample["pii"] == []


def test_valid_tool_calls_match_target_and_registry(split, registry):
    valid = [s for s in split if s["tool_call"] is not None and not defects(s, registry)]
    assert len(valid) >= 0.6 * len(split)
    for sample in valid:
        body = TOOL_TARGET.fullmatch(sample["target"]).group(2)
        assert body == json.dumps(sample["tool_call"], sort_keys=True, separators=(",", ":"))
        assert set(sample["tool_call"]) == {"name", "arguments"}
        params = registry[sample["tool_call"]["name"]]
        for arg in params["required"]:
            assert JSON_TYPES[params["properties"][arg]["type"]](sample["tool_call"]["arguments"][arg])


def test_invalid_train_samples(train, registry):
    found = {s["id"]: defects(s, registry) for s in train}
    invalid = {sid: d for sid, d in found.items() if d}
    assert 0.02 <= len(invalid) / len(train) <= 0.05
    assert all(len(d) == 1 and d[0] in DEFECT_KINDS for d in invalid.values()), invalid
    assert {d[0] for d in invalid.values()} == DEFECT_KINDS


def test_eval_has_no_invalid_samples(eval_set, registry):
    assert [s["id"] for s in eval_set if defects(s, registry)] == []


def test_privacy_targets_never_contain_pii(split):
    privacy = [s for s in split if s["kind"] == "privacy"]
    assert any(s["tool_call"] for s in privacy) and any(s["tool_call"] is None for s in privacy)
    for sample in split:
        if sample["kind"] != "privacy":
            assert sample["pii"] == []
            continue
        assert sample["pii"], sample["id"]
        for pii in sample["pii"]:
            assert pii in sample["prompt"], (sample["id"], pii)
            assert pii not in sample["target"], (sample["id"], pii)


def test_integration_strings_are_in_final_answer(split):
    for sample in split:
        if sample["tool_call"] is None:
            continue
        answer = sample["target"].rsplit("</tool_result>", 1)[1]
        for text in sample["integration"]:
            assert text in answer, (sample["id"], text)


def test_eval_prompts_not_in_train(train, eval_set):
    assert not {s["prompt"] for s in eval_set} & {s["prompt"] for s in train}
    assert len({s["prompt"] for s in eval_set}) == len(eval_set)


def test_corpus_is_train_prompts_and_targets(train):
    data = (TOY / "corpus.txt").read_bytes()
    assert len(data) < 400_000
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == ""
    assert lines[:-1] == [text for s in train for text in (s["prompt"], s["target"])]


def test_prompts_are_valid_chat_prompts_from_the_train_side(eval_set):
    """data.prompts: every line is a valid prompt (docs/chat_data.md), ids unique, no eval prompt among them,
    and each tool prompt's fixture answers the reference call."""
    from runtime.data.chat_checks import find_fixture, is_ready_made, validate_chat

    prompts = [json.loads(line) for line in (TOY / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    seen: set[str] = set()
    assert [validate_chat(p, seen) for p in prompts] == [None] * len(prompts)
    assert not any(is_ready_made(p) for p in prompts)
    assert {p["messages"][0]["content"] for p in prompts}.isdisjoint({s["prompt"] for s in eval_set})
    assert sum(p["kind"] == "tool" for p in prompts) == 80 and len(prompts) == 112
    for p in prompts:
        for name, entries in p["fixtures"].items():
            assert find_fixture(p["fixtures"], name, json.dumps(entries[0]["arguments"]))[0]


def test_chat_template_renders_a_sample_exactly_as_train_writes_it(train):
    """chat_template.jinja turns the chat form of a valid sample into bos + prompt + target + eos, so
    transcripts from the teacher and the ready-made samples are the same text to the student."""
    from runtime.data.chat import ChatTemplate, prepare_messages

    template = ChatTemplate.from_file(TOY / "chat_template.jinja")
    checked = 0
    for s in train:
        think, _, rest = s["target"].partition("</think>")
        messages = [{"role": "user", "content": s["prompt"]}]
        if s["tool_call"] is None:
            messages.append({"role": "assistant", "reasoning_content": think.removeprefix("<think>"), "content": rest})
        else:
            call = json.dumps(s["tool_call"], sort_keys=True, separators=(",", ":"))
            if f"<tool_call>{call}</tool_call>" not in rest:
                continue  # a deliberately invalid sample
            answer = rest.split("</tool_result>", 1)[1]
            messages += [{"role": "assistant", "reasoning_content": think.removeprefix("<think>"), "content": None,
                          "tool_calls": [{"id": "c1", "type": "function", "function": {
                              "name": s["tool_call"]["name"], "arguments": json.dumps(s["tool_call"]["arguments"])}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": s["tool_result"]},
                         {"role": "assistant", "content": answer}]
        text = template.render(prepare_messages(messages, arguments_as_dict=True), prepared=True, bos_token="<s>",
                               eos_token="</s>")
        assert text == "<s>" + s["prompt"] + s["target"] + "</s>", s["id"]
        checked += 1
    assert checked > 1000
