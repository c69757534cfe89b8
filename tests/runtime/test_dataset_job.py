"""The dataset job: validation against the registry, deterministic split, token masks, byte-identical outputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from compiler.planning.params import DatasetParams, SpecialTokenP, TokenizerParams
from runtime.data.shards import read_split
from runtime.hashing import tree_sha256
from runtime.remote import RemoteInputError
from runtime.jobs import dataset as dsjob
from runtime.jobs import tokenizer as tokjob
from tests.runtime.helpers import Ctx

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
TOY = SPECS / "data" / "toy"
PLAN = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())
L = 256
DEFECTS = {"unknown_tool": 9, "missing_required": 9, "wrong_type": 9, "bad_json": 9}




def plan_params(job_id: str) -> dict:
    return next(j for j in PLAN["jobs"] if j["id"] == job_id)["params"]


def ds_params(**kw) -> DatasetParams:
    return DatasetParams.model_validate({**plan_params("dataset"), **kw}, strict=False)


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_ds(tok_dir: Path, out: Path, params: DatasetParams | None = None, ctx: Ctx | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return dsjob.run(params or ds_params(), {"tokenizer": {"tokenizer": tok_dir, "report": tok_dir.parent / "report.json"}},
                     out, ctx or Ctx())


def invalid_ids(registry: dict) -> set[str]:
    """Independent check of the README's defects (no code shared with the job)."""
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
    bad = set()
    for s in load_jsonl(TOY / "train.jsonl"):
        if "<tool_call>" not in s["target"]:
            continue
        body = s["target"].split("<tool_call>")[1].split("</tool_call>")[0]
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            bad.add(s["id"])
            continue
        tool = registry.get(call["name"])
        if tool is None or any(r not in call["arguments"] for r in tool["required"]):
            bad.add(s["id"])
            continue
        for arg, v in call["arguments"].items():
            want = tool["properties"][arg]["type"]
            if not isinstance(v, types[want]) or (want != "boolean" and isinstance(v, bool)):
                bad.add(s["id"])
    return bad


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    tokjob.run(TokenizerParams.model_validate(plan_params("tokenizer"), strict=False), {}, out, Ctx())
    return out / "tokenizer"


@pytest.fixture(scope="module")
def toy(tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    ctx = Ctx()
    metrics = run_ds(tok_dir, out, ctx=ctx)
    data = out / "data"
    return SimpleNamespace(
        out=out, metrics=metrics, ctx=ctx, tok=tokjob.load_tokenizer(tok_dir),
        arrays={s: read_split(data, s, numpy=True) for s in dsjob.SPLITS},
        meta={s: load_jsonl(data / f"{s}.jsonl") for s in dsjob.SPLITS},
    )


def test_outputs_exist_and_report(toy):
    assert sorted(p.name for p in toy.out.iterdir()) == ["data", "report.json"]
    names = sorted(p.name for p in (toy.out / "data").iterdir())
    assert names == sorted(f"{s}{ext}" for s in dsjob.SPLITS for ext in (".jsonl", "-00000.safetensors", ".index.json"))
    text = (toy.out / "report.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert json.loads(text) == json.loads(json.dumps(toy.metrics)) | {"provenance": {}}
    assert toy.metrics["fingerprint"] == tree_sha256(toy.out / "data")
    assert toy.metrics["tokenizer_fingerprint"] == tree_sha256(Path(toy.tok.name_or_path))
    assert {e[1] for e in toy.ctx.events if e[0] == "start"} == {"validate samples", "tokenize"}


def test_drops_exactly_the_invalid_toy_samples(toy):
    registry = {t["name"]: t["parameters"] for t in json.loads((TOY / "tools.json").read_text())["tools"]}
    bad = invalid_ids(registry)
    assert len(bad) == 36
    assert toy.metrics["dropped_by_reason"] == DEFECTS
    assert toy.metrics["inputs"]["train"]["dropped_by_reason"] == DEFECTS
    assert toy.metrics["inputs"]["eval"]["dropped"] == 0
    kept = {m["id"] for s in ("train", "val") for m in toy.meta[s]}
    all_train = {s["id"] for s in load_jsonl(TOY / "train.jsonl")}
    assert kept == all_train - bad
    assert {m["id"] for m in toy.meta["eval"]} == {s["id"] for s in load_jsonl(TOY / "eval.jsonl")}
    assert sum(len(v) for v in toy.metrics["dropped_examples"].values()) == 36


def test_corruption_rate_reported(toy):
    assert toy.metrics["corruption_rate"] == {"train": 36 / 1200, "eval": 0.0}
    splits = toy.metrics["splits"]
    assert splits["train"]["dropped"] + splits["val"]["dropped"] == 36
    assert splits["train"]["read"] + splits["val"]["read"] == 1200
    for s in ("train", "val"):
        assert splits[s]["corruption_rate"] == splits[s]["dropped"] / splits[s]["read"]
    assert splits["eval"]["corruption_rate"] == 0.0
    assert toy.metrics["too_long"] == 0 and toy.metrics["truncated"] == 0


def test_counts_per_split_and_kind(toy):
    counts = toy.metrics["counts"]
    assert counts["train"] + counts["val"] == 1164 and counts["eval"] == 120
    for s in dsjob.SPLITS:
        assert counts[s] == len(toy.meta[s]) == toy.arrays[s]["input_ids"].shape[0]
        assert toy.metrics["by_kind"][s] == dict(Counter(m["kind"] for m in toy.meta[s]))
    assert toy.metrics["by_kind"]["eval"] == {"control": 18, "privacy": 18, "tool": 84}
    tool_total = toy.metrics["by_kind"]["train"]["tool"] + toy.metrics["by_kind"]["val"]["tool"]
    assert tool_total == 840 - 36


def test_split_deterministic_and_disjoint(toy):
    ids = {s: [m["id"] for m in toy.meta[s]] for s in dsjob.SPLITS}
    assert set(ids["train"]).isdisjoint(ids["val"]) and set(ids["eval"]).isdisjoint(ids["train"] + ids["val"])
    assert all(dsjob.split_of(i) == "val" for i in ids["val"]) and all(dsjob.split_of(i) == "train" for i in ids["train"])
    assert 0.02 <= len(ids["val"]) / 1164 <= 0.09
    assert ids["train"] == sorted(ids["train"]) and ids["val"] == sorted(ids["val"])  # file order kept
    assert dsjob.split_of("train-00001") == dsjob.split_of("train-00001")


def test_tensors_shape_dtype_padding(toy):
    for s in dsjob.SPLITS:
        a = toy.arrays[s]
        assert set(a) == set(dsjob.TENSORS)
        for name, t in a.items():
            assert t.dtype == np.int32 and t.shape == (len(toy.meta[s]), L), name
        for r, m in enumerate(toy.meta[s]):
            n = m["length"]
            assert a["attention_mask"][r].sum() == n and a["attention_mask"][r, :n].all()
            assert (a["input_ids"][r, n:] == 0).all()
            assert a["input_ids"][r, 0] == 1 and a["input_ids"][r, n - 1] == 2
            for mask in dsjob.MASKS:
                assert not a[mask][r, n:].any()


def test_loss_mask_covers_target_and_eos(toy):
    a, meta = toy.arrays["train"], toy.meta["train"]
    for r, m in enumerate(meta[:200]):
        p, n = m["prompt_len"], m["length"]
        assert not a["loss_mask"][r, :p].any() and a["loss_mask"][r, p:n].all()
        ids = [int(i) for i in a["input_ids"][r, :n]]
        assert toy.tok.decode(ids[1:p], skip_special_tokens=False) == m["prompt"]
        assert toy.tok.decode(ids[p:n - 1], skip_special_tokens=False) == m["target"]


def masked_text(toy, split: str, r: int, mask: str) -> str:
    a = toy.arrays[split]
    ids = [int(i) for i, k in zip(a["input_ids"][r], a[mask][r]) if k]
    return toy.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_tool_masks_nonempty_and_aligned(toy):
    assert toy.metrics["alignment_errors"]["total"] == 0 and toy.metrics["roundtrip_errors"] == 0
    checked = 0
    for s in dsjob.SPLITS:
        for r, m in enumerate(toy.meta[s]):
            if m["tool"] is None:
                continue
            a = toy.arrays[s]
            for mask in dsjob.SPAN_MASKS:
                assert a[mask][r].any(), (m["id"], mask)
                assert not (a[mask][r] & (1 - a["loss_mask"][r])).any(), (m["id"], mask)  # spans lie in the target
            assert m["tool"] in masked_text(toy, s, r, "tool_name_mask")
            args = json.dumps(m["tool_call"]["arguments"], sort_keys=True, separators=(",", ":"))
            assert args in masked_text(toy, s, r, "json_args_mask")
            for text in m["integration"]:
                assert text in masked_text(toy, s, r, "integration_mask")
            checked += 1
    assert checked == sum(toy.metrics["splits"][s]["tool_rows"] for s in dsjob.SPLITS) > 900


def test_samples_without_tool_call_have_empty_tool_masks(toy):
    seen = Counter()
    for s in dsjob.SPLITS:
        for r, m in enumerate(toy.meta[s]):
            if m["kind"] == "control" or m["tool"] is None:
                seen[m["kind"]] += 1
                for mask in dsjob.SPAN_MASKS:
                    assert not toy.arrays[s][mask][r].any(), (m["id"], mask)
                assert toy.arrays[s]["loss_mask"][r].any()
    assert seen["control"] == 180 + 18 and seen["privacy"] > 0
    # privacy samples that do call a tool (half of them, by the README) carry tool masks like any tool sample
    assert any(m["kind"] == "privacy" and m["tool"] for m in toy.meta["train"])


def test_row_metadata(toy):
    m = next(m for m in toy.meta["eval"] if m["kind"] == "privacy")
    assert set(m) == {"id", "kind", "row", "prompt_len", "length", "tool", "tool_call", "pii", "integration", "prompt", "target"}
    assert m["pii"] and all(p in m["prompt"] for p in m["pii"])
    assert [x["row"] for x in toy.meta["eval"]] == list(range(120))


def test_outputs_byte_identical_across_runs(toy, tok_dir, tmp_path):
    metrics = run_ds(tok_dir, tmp_path)
    for p in sorted((toy.out / "data").iterdir()):
        assert (tmp_path / "data" / p.name).read_bytes() == p.read_bytes(), p.name
    assert (tmp_path / "report.json").read_bytes() == (toy.out / "report.json").read_bytes()
    assert metrics["fingerprint"] == toy.metrics["fingerprint"]


def test_safetensors_metadata(toy):
    from runtime.data.shards import RowSource

    info = json.loads(RowSource(toy.out / "data", "eval").metadata["modelspec"])
    assert info == {"split": "eval", "max_seq_len": L, "pad_id": 0, "bos_id": 1, "eos_id": 2}


# -- small hand-made datasets ---------------------------------------------------------------------

REGISTRY = {"tools": [
    {"name": "f", "parameters": {"type": "object", "required": ["n", "x"],
                                 "properties": {"n": {"type": "integer"}, "x": {"type": "number"},
                                                "s": {"type": "string"}, "b": {"type": "boolean"}}}},
]}


def tool_sample(sid: str, args: dict, body: str | None = None, kind: str = "tool", **kw) -> dict:
    call = {"name": "f", "arguments": args}
    body = json.dumps(call, sort_keys=True, separators=(",", ":")) if body is None else body
    s = {"id": sid, "kind": kind, "prompt": "Do f.", "pii": [], "integration": ["done 7"], "tool_result": "ok",
         "tool_call": call, "target": f"<think>f.</think><tool_call>{body}</tool_call><tool_result>ok</tool_result>It is done 7."}
    return {**s, **kw}


def write_data(folder: Path, train: list[dict], eval_: list[dict] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tools.json").write_text(json.dumps(REGISTRY))
    (folder / "train.jsonl").write_text("".join(json.dumps(s) + "\n" for s in train))
    ok = tool_sample("e-1", {"n": 1, "x": 2})
    (folder / "eval.jsonl").write_text("".join(json.dumps(s) + "\n" for s in (eval_ if eval_ is not None else [ok])))


def small_params(**kw) -> DatasetParams:
    return ds_params(train="d/train.jsonl", eval="d/eval.jsonl", tool_registry="d/tools.json", **kw)


def test_validation_reasons(tok_dir, tmp_path):
    chat = {"id": "c-1", "kind": "control", "prompt": "Hi", "target": "<think>x</think>Hello.", "tool_call": None,
            "tool_result": None, "integration": [], "pii": []}
    train = [
        tool_sample("ok-int-as-number", {"n": 1, "x": 2}),
        tool_sample("ok-float", {"n": 1, "x": 2.5, "b": False}),
        tool_sample("bool-as-number", {"n": 1, "x": True}),
        tool_sample("bool-as-integer", {"n": True, "x": 1}),
        tool_sample("float-as-integer", {"n": 1.5, "x": 1}),
        tool_sample("string-as-bool", {"n": 1, "x": 1, "b": "yes"}),
        tool_sample("missing", {"n": 1}),
        tool_sample("extra-arg", {"n": 1, "x": 1, "zzz": 1}),
        tool_sample("bad-json", {"n": 1, "x": 1}, body='{"name":"f","arguments":{"n":1,"x":1}'),
        tool_sample("mismatch", {"n": 1, "x": 1}, body='{"name":"f","arguments":{"n":2,"x":1}}'),
        tool_sample("pii", {"n": 1, "x": 1}, kind="privacy", pii=["done 7"]),
        tool_sample("no-integration", {"n": 1, "x": 1}, integration=["missing text"]),
        tool_sample("control-calls", {"n": 1, "x": 1}, kind="control"),
        {**chat, "id": "tool-no-call", "kind": "tool"},
        {**chat, "tool_call": {"name": "f", "arguments": {"n": 1, "x": 1}}, "id": "field-without-markup"},
        {"id": "schema", "kind": "tool"},
        chat,
        {**chat},  # duplicate id
    ]
    write_data(tmp_path / "d", train)
    (tmp_path / "d" / "train.jsonl").write_text((tmp_path / "d" / "train.jsonl").read_text() + "not json\n\n")
    metrics = run_ds(tok_dir, tmp_path / "out", small_params(), Ctx(spec_dir=tmp_path))
    assert metrics["inputs"]["train"]["dropped_by_reason"] == {
        "bad_json": 1, "bad_line": 1, "bad_schema": 1, "call_mismatch": 2, "control_with_tool_call": 1,
        "duplicate_id": 1, "integration_missing": 1, "missing_required": 1, "pii_in_target": 1,
        "tool_kind_without_call": 1, "unknown_argument": 1, "wrong_type": 4,
    }
    assert metrics["inputs"]["train"]["read"] == 19
    kept = {m["id"] for s in ("train", "val") for m in load_jsonl(tmp_path / "out" / "data" / f"{s}.jsonl")}
    assert kept == {"ok-int-as-number", "ok-float", "c-1"}
    assert metrics["alignment_errors"]["total"] == 0


def test_too_long_samples_are_rejected_and_counted(tok_dir, tmp_path):
    long = tool_sample("long", {"n": 1, "x": 1, "s": "word " * 60})
    write_data(tmp_path / "d", [tool_sample("short", {"n": 1, "x": 1}), long])
    metrics = run_ds(tok_dir, tmp_path / "out", small_params(max_seq_len=64), Ctx(spec_dir=tmp_path))
    assert metrics["too_long"] == 1
    rows = [m["id"] for s in ("train", "val") for m in load_jsonl(tmp_path / "out" / "data" / f"{s}.jsonl")]
    assert rows == ["short"]
    a = read_split(tmp_path / "out" / "data", dsjob.split_of("short"), numpy=True)
    assert a["input_ids"].shape == (1, 64)


def test_empty_split_still_written(tok_dir, tmp_path):
    write_data(tmp_path / "d", [tool_sample("only", {"n": 1, "x": 1})])
    metrics = run_ds(tok_dir, tmp_path / "out", small_params(), Ctx(spec_dir=tmp_path))
    empty = "val" if dsjob.split_of("only") == "train" else "train"
    assert metrics["counts"][empty] == 0
    assert read_split(tmp_path / "out" / "data", empty, numpy=True)["input_ids"].shape == (0, L)


def test_unsupported_uri_scheme_is_refused(tok_dir, tmp_path):
    # s3://, gs://, hf:// and https:// are read through fsspec (tests/runtime/test_remote_inputs.py)
    with pytest.raises(RemoteInputError, match="the ftp:// scheme is not supported"):
        run_ds(tok_dir, tmp_path, ds_params(train="ftp://host/train.jsonl"))


def test_tokenizer_that_disagrees_with_spec_fails(tok_dir, tmp_path):
    special = {**ds_params().special_tokens, "bos": SpecialTokenP(text="<s>", id=3)}
    with pytest.raises(dsjob.DatasetJobError, match="'bos'.*spec says \\[3\\]"):
        run_ds(tok_dir, tmp_path, ds_params().model_copy(update={"special_tokens": special}))


# --- ready-made chat samples in data.train (docs/chat_data.md) --------------------------------------------

def _chat_tools() -> list[dict]:
    registry = json.loads((TOY / "tools.json").read_text())["tools"]
    return [{"type": "function", "function": t} for t in registry]


def _call(cid: str, name: str, args: dict) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


CHAT_OK = [
    {"id": "chat-parallel", "kind": "tool", "tools": _chat_tools(), "messages": [
        {"role": "user", "content": "Weather in Paris and in Oslo?"},
        {"role": "assistant", "reasoning_content": "Two cities.", "content": None, "tool_calls": [
            _call("a", "get_weather", {"city": "Paris", "unit": "celsius"}),
            _call("b", "get_weather", {"city": "Oslo", "unit": "celsius"})]},
        {"role": "tool", "tool_call_id": "a", "content": "21C and sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "4C and rain"},
        {"role": "assistant", "content": "Paris is 21C and sunny; Oslo is 4C and rain."}]},
    {"id": "chat-two-rounds", "kind": "tool", "tools": _chat_tools(), "messages": [
        {"role": "user", "content": "Find Ana, then add lunch with her on Monday."},
        {"role": "assistant", "content": None, "tool_calls": [_call("c", "search_contacts", {"query": "Ana"})]},
        {"role": "tool", "tool_call_id": "c", "content": "1 match"},
        {"role": "assistant", "content": None, "tool_calls": [
            _call("d", "add_event", {"title": "lunch", "day": "Monday", "hour": 12})]},
        {"role": "tool", "tool_call_id": "d", "content": "added"},
        {"role": "assistant", "content": "Found 1 match and the lunch is added."}]},
    {"id": "chat-multi-turn", "kind": "control", "messages": [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."}]},
]
CHAT_BAD = {
    "not_ready_made": {"id": "chat-prompt", "kind": "control", "messages": [{"role": "user", "content": "hi"}]},
    "pii_echoed": {"id": "chat-pii", "kind": "privacy", "pii": ["Priya Shah"], "messages": [
        {"role": "user", "content": "Write to Priya Shah."}, {"role": "assistant", "content": "Dear Priya Shah,"}]},
    "schema_violation": {"id": "chat-schema", "kind": "tool", "tools": _chat_tools(), "messages": [
        {"role": "user", "content": "Timer"},
        {"role": "assistant", "content": None, "tool_calls": [_call("e", "set_timer", {"minutes": "five", "label": "tea"})]},
        {"role": "tool", "tool_call_id": "e", "content": "ok"}, {"role": "assistant", "content": "Set."}]},
}


def test_ready_made_chat_samples_join_the_train_split(tok_dir, tmp_path):
    """Chat samples beside the toy format: validated, rendered with the tokenizer's template, loss on assistant
    turns only; prompts, PII echoes and schema violations are dropped by reason."""
    train = tmp_path / "train.jsonl"
    toy_rows = (TOY / "train.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    train.write_text("\n".join(toy_rows + [json.dumps(s) for s in CHAT_OK + list(CHAT_BAD.values())]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    report = run_ds(tok_dir, out, ds_params(train=str(train), eval=str(TOY / "eval.jsonl")))
    dropped = report["inputs"]["train"]["dropped_by_reason"]
    assert {r: dropped.get(r) for r in CHAT_BAD} == {reason: 1 for reason in CHAT_BAD}
    assert set(dropped) - set(CHAT_BAD) <= set(DEFECTS)  # the rest: the toy rows' deliberate defects
    tok = tokjob.load_tokenizer(tok_dir)
    rows = {}
    for split in ("train", "val"):
        arrays = read_split(out / "data", split, numpy=True)
        for m in load_jsonl(out / "data" / f"{split}.jsonl"):
            if m.get("format") == "chat":
                rows[m["id"]] = (m, {k: v[m["row"]] for k, v in arrays.items()})
    assert set(rows) == {s["id"] for s in CHAT_OK}
    for sample in CHAT_OK:
        meta, a = rows[sample["id"]]
        n = int(a["attention_mask"].sum())
        ids = a["input_ids"][:n].tolist()
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and n == meta["length"]
        learned = tok.decode([t for t, m in zip(ids, a["loss_mask"][:n]) if m], skip_special_tokens=False)
        for turn in sample["messages"]:
            if turn["role"] == "assistant" and turn.get("content"):
                assert turn["content"] in learned  # every assistant text is trained on
            if turn["role"] == "user":
                assert turn["content"] not in learned  # no user text is
        assert "<tool_result>" not in learned  # nor a tool's result (the answer may restate it)
        names = tok.decode([t for t, m in zip(ids, a["tool_name_mask"][:n]) if m])
        for turn in sample["messages"]:
            for call in turn.get("tool_calls") or []:
                assert call["function"]["name"] in names
    assert rows["chat-parallel"][0]["tools"] == ["get_weather", "get_weather"]
    assert int(rows["chat-parallel"][1]["integration_mask"].sum()) > 0  # "21C and sunny" restated in the answer


def test_a_chat_sample_in_data_eval_is_refused(tok_dir, tmp_path):
    evalf = tmp_path / "eval.jsonl"
    evalf.write_text((TOY / "eval.jsonl").read_text(encoding="utf-8") + json.dumps(CHAT_OK[2]) + "\n", encoding="utf-8")
    with pytest.raises(dsjob.DatasetJobError, match="is a chat sample; the eval job replays tool results in the toy format"):
        run_ds(tok_dir, tmp_path / "out", ds_params(eval=str(evalf)))


def test_judge_rows_are_checked_laid_out_and_written_with_their_vectors(tok_dir, tmp_path):
    from runtime.data import judge as J
    from runtime.data.shards import read_split

    rows = [{"id": f"p{i}", "kind": "pairwise", "prompt": f"What is {i}+1?", "chosen": f"{i + 1}.", "rejected": f"{i + 2}.",
             **({"teacher": {"preference": 0.75}} if i % 2 else {})} for i in range(40)]
    rows += [{"id": f"c{i}", "kind": "clauses", "prompt": "Hi?", "response": f"Mail {i}@x.y", "labels": ["privacy"]}
             for i in range(10)]
    bad = [{"id": "b1", "kind": "clauses", "prompt": "Hi?", "response": "x", "labels": ["tone"]},
           {"id": "b2", "kind": "pairwise", "prompt": "Hi?", "chosen": "a", "rejected": "a"},
           {"id": "p0", "kind": "pairwise", "prompt": "Hi?", "chosen": "a", "rejected": "b"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows + bad) + "not json\n", encoding="utf-8")
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps({**r, "id": "e" + r["id"]}) + "\n" for r in rows[:6]), encoding="utf-8")
    params = ds_params(train=str(train), eval=str(ev), role="judge",
                       judge_clauses=["privacy", "format"])
    report = run_ds(tok_dir, tmp_path / "out", params)
    assert report["dropped_by_reason"] == {"bad_line": 1, "duplicate_id": 1, "identical_responses": 1, "unknown_clause": 1}
    assert report["counts"]["eval"] == 12 and report["counts"]["train"] + report["counts"]["val"] == 40 * 2 + 10
    data = tmp_path / "out" / "data"
    split = read_split(data, "eval", numpy=True)
    meta = load_jsonl(data / "eval.jsonl")
    assert split["judge"].shape == (12, J.width(2)) and not split["loss_mask"].any()
    lengths = split["attention_mask"].sum(axis=1)
    assert (split["judge"][:, 0] == lengths - 1).all()  # the verdict position is the last token (eos)
    assert (split["input_ids"][np.arange(12), lengths - 1] == params.special_tokens["eos"].id).all()
    assert [(m["pair"], m["order"]) for m in meta[:2]] == [("ep0", 0), ("ep0", 1)]
    for s in ("train", "val"):  # a pair lands in one split whole
        pairs = [m["pair"] for m in load_jsonl(data / f"{s}.jsonl") if m["kind"] == "pairwise"]
        assert all(pairs.count(p) == 2 for p in pairs)
