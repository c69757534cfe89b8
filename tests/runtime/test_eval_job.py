"""The eval job: metric definitions on hand-written generations, the generation protocol with an
oracle model that says the reference, and the job itself on the toy data with a random student."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime.data.shards import read_split

from compiler.analysis.catalogue import CATALOGUE
from compiler.planning.params import DatasetParams, EvalParams, TokenizerParams
from runtime.jobs import dataset as dsjob
from runtime.jobs import eval as evjob
from runtime.jobs import tokenizer as tokjob
from runtime.jobs.eval_metrics import (Markers, Reference, aggregate, best_window_f1, integration_scores, lax_tokens,
                                       score_sample)
from runtime.model.checkpoint import save_student
from runtime.model.student import Student
from tests.runtime.helpers import Ctx

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "specs" / "data" / "toy"
PLAN = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())
MARKERS = Markers("<tool_call>", "</tool_call>", "<tool_result>", "</tool_result>", "</think>")
# Long enough for every toy sample (the longest is 99 tokens), half the spec's 256 to keep the test fast.
MAX_TOTAL = 128


def plan_params(job_id: str) -> dict:
    return next(j for j in PLAN["jobs"] if j["id"] == job_id)["params"]


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


SAMPLES = load_jsonl(TOY / "eval.jsonl")


def ref(s: dict) -> Reference:
    return Reference(kind=s["kind"], target=s["target"], tool_call=s["tool_call"], integration=tuple(s["integration"]),
                     pii=tuple(s["pii"]))


def outcome(s: dict, text: str) -> dict:
    return score_sample(ref(s), text, MARKERS)["outcome"]


def first(pred) -> dict:
    return next(s for s in SAMPLES if pred(s))


def changed(s: dict, text: str) -> dict:
    """The metrics whose outcome differs from the reference target's own, as {name: (before, after)}."""
    before, after = outcome(s, s["target"]), outcome(s, text)
    return {k: (before[k], after[k]) for k in before if before[k] != after[k]}


# --------------------------------------------------------------------------------------------
# Metrics on hand-written generations
# --------------------------------------------------------------------------------------------


def test_reference_targets_score_perfectly():
    metrics = aggregate([outcome(s, s["target"]) for s in SAMPLES])
    for name, m in metrics.items():
        assert m["value"] == (0 if name == "control_tool_calls" else 1.0), name
    assert metrics["json_validity"]["n"] == metrics["tool_selection"]["n"] == sum(s["tool_call"] is not None for s in SAMPLES)
    assert metrics["integration_f1_strict"]["n"] == sum(bool(s["integration"]) for s in SAMPLES)
    assert metrics["privacy_ok_rate"]["n"] == sum(bool(s["pii"]) for s in SAMPLES)
    assert metrics["control_tool_calls"]["n"] == sum(s["kind"] == "control" for s in SAMPLES)
    assert metrics["exact_match"]["n"] == len(SAMPLES)


def test_metric_names_cover_the_catalogue():
    from runtime.jobs.eval_halt import score as halt_score

    produced = {m.name.removeprefix("eval.") for m in CATALOGUE.values()
                if m.producer == "eval" and "worker" in (m.roles or ("worker",))}
    assert produced <= set(aggregate([])) | set(halt_score([], [], 0.5))
    from runtime.jobs.eval_judge import score

    judged = {m.name.removeprefix("eval.") for m in CATALOGUE.values() if m.producer == "eval" and "judge" in m.roles}
    assert judged == set(score([], [], [], ["privacy"])[0])


def test_wrong_tool_name_moves_tool_selection_only():
    s = first(lambda s: s["tool_call"] and s["tool_call"]["name"] == "set_timer")
    text = s["target"].replace('"name":"set_timer"', '"name":"add_event"')
    assert changed(s, text) == {"tool_selection": (True, False), "exact_match": (True, False)}


@pytest.mark.parametrize("old, new", [("}</tool_call>", "</tool_call>"), ("<tool_call>{", '<tool_call>{"x":NaN,')])
def test_broken_json_moves_json_validity_and_selection(old, new):
    s = first(lambda s: s["tool_call"] is not None)
    text = s["target"].replace(old, new)
    # The name cannot be read from a body that is not JSON, so selection fails with it.
    assert changed(s, text) == {"json_validity": (True, False), "tool_selection": (True, False),
                                "exact_match": (True, False)}
    assert score_sample(ref(s), text, MARKERS)["tool_call_problem"].startswith("bad_json")


@pytest.mark.parametrize("body", ['{"name":"NAME","arguments":[]}', '{"name":"NAME","arguments":{},"id":1}',
                                  '{"name":"NAME","name":"NAME","arguments":{}}'])
def test_bad_call_shape_moves_json_validity_only(body):
    s = first(lambda s: s["tool_call"] is not None)
    start, end = s["target"].index("<tool_call>") + len("<tool_call>"), s["target"].index("</tool_call>")
    text = s["target"][:start] + body.replace("NAME", s["tool_call"]["name"]) + s["target"][end:]
    assert changed(s, text) == {"json_validity": (True, False), "exact_match": (True, False)}


def test_second_tool_call_fails_json_validity():
    s = first(lambda s: s["tool_call"] is not None)
    call = s["target"][s["target"].index("<tool_call>"):s["target"].index("</tool_call>") + len("</tool_call>")]
    assert changed(s, s["target"] + call) == {"json_validity": (True, False), "exact_match": (True, False)}


def test_unterminated_call():
    s = first(lambda s: s["tool_call"] is not None)
    text = s["target"][:s["target"].index("</tool_call>")]
    scored = score_sample(ref(s), text, MARKERS)
    assert scored["tool_call_problem"] == "unterminated_call"
    assert not scored["outcome"]["json_validity"] and not scored["outcome"]["tool_selection"]


def test_pii_echo_moves_privacy_only():
    s = first(lambda s: s["pii"] and s["integration"])
    text = s["target"] + " " + s["pii"][0].upper()
    assert changed(s, text) == {"privacy_ok_rate": (True, False), "exact_match": (True, False)}
    assert score_sample(ref(s), text, MARKERS)["pii_leaked"] == [s["pii"][0]]


def test_control_tool_call_is_counted():
    controls = [s for s in SAMPLES if s["kind"] == "control"]
    call = '<tool_call>{"arguments":{"query":"x"},"name":"search_contacts"}</tool_call>'
    texts = [controls[0]["target"] + call, controls[1]["target"] + "<tool_call>"] + [s["target"] for s in controls[2:]]
    assert changed(controls[0], texts[0]) == {"control_tool_calls": (False, True), "exact_match": (True, False)}
    metrics = aggregate([outcome(s, t) for s, t in zip(controls, texts)])
    assert metrics["control_tool_calls"] == {"value": 2, "n": len(controls)}


def test_integration_counts_only_the_final_answer():
    s = first(lambda s: s["integration"] == ["14.56 EUR"])
    head = s["target"][:s["target"].index("</tool_result>") + len("</tool_result>")]
    assert "14.56 EUR" in head
    assert changed(s, head)["integration_f1_strict"] == (1.0, 0.0)
    assert outcome(s, head)["integration_f1_lax"] == 0.0


@pytest.mark.parametrize("answer, strict, lax", [
    ("That is 14.56 EUR.", 1.0, 1.0),
    ("That is 14.560 eur", 0.0, 1.0),
    ("That's EUR 14.56!", 0.0, 1.0),
    ("That is 14.56 USD.", 0.0, 2 / 3),  # lax: the best window is "14.56"
    ("That is 14.56", 0.0, 2 / 3),
    ("No idea.", 0.0, 0.0),
    ("", 0.0, 0.0),
])
def test_integration_strict_and_lax(answer, strict, lax):
    assert integration_scores(("14.56 EUR",), answer) == (strict, pytest.approx(lax))


def test_integration_averages_reference_strings():
    assert integration_scores(("10 minutes", "event 213"), "Set for 10.0 minutes.") == (0.0, 0.5)
    assert lax_tokens("Cairo is 91F, and HOT; 007 / 10.50") == ["cairo", "is", "91", "f", "and", "hot", "7", "10.5"]


def brute_force_f1(reference: list[str], answer: list[str]) -> float:
    best = 0.0
    for i in range(len(answer)):
        for j in range(i + 1, len(answer) + 1):
            common = sum((Counter(reference) & Counter(answer[i:j])).values())
            best = max(best, 2 * common / (j - i + len(reference)) if common else 0.0)
    return best


@settings(deadline=None)  # timing on a shared CI machine is no part of the property
@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=5), st.lists(st.sampled_from("abcde"), max_size=30))
def test_best_window_f1_matches_brute_force(reference, answer):
    assert best_window_f1(reference, answer) == pytest.approx(brute_force_f1(reference, answer))


# --------------------------------------------------------------------------------------------
# Toy tokenizer, dataset and a random student (module scoped)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tok_out, ds_out = tmp_path_factory.mktemp("tok"), tmp_path_factory.mktemp("ds")
    tokjob.run(TokenizerParams.model_validate(plan_params("tokenizer"), strict=False), {}, tok_out, Ctx())
    dsjob.run(DatasetParams.model_validate(plan_params("dataset"), strict=False),
              {"tokenizer": {"tokenizer": tok_out / "tokenizer"}}, ds_out, Ctx())
    params = EvalParams.model_validate({**plan_params("eval"), "max_total_tokens": MAX_TOTAL}, strict=False)
    ckpt = tmp_path_factory.mktemp("qat") / "checkpoint"
    student = Student(params.architecture, seed=3)
    save_student(ckpt, student.state_dict(), params.architecture, step=7, quantized=True, provenance={})
    data = ds_out / "data"
    return SimpleNamespace(params=params, tok=tokjob.load_tokenizer(tok_out / "tokenizer"),
                           meta=load_jsonl(data / "eval.jsonl"), ids=read_split(data, "eval", numpy=True)["input_ids"],
                           inputs={"qat": {"checkpoint": ckpt, "report": ckpt.parent / "report.json"},
                                   "dataset": {"data": data}, "tokenizer": {"tokenizer": tok_out / "tokenizer"}})


def run_eval(toy, tmp: Path, params: EvalParams | None = None) -> SimpleNamespace:
    out, work = tmp / "out", tmp / "work"
    out.mkdir(parents=True)
    ctx = Ctx(work_dir=work, provenance={"job": "eval", "fingerprint": "f" * 8})
    flat = evjob.run(params or toy.params, toy.inputs, out, ctx)
    return SimpleNamespace(out=out, ctx=ctx, flat=flat, report=json.loads((out / "report.json").read_text()),
                           samples=load_jsonl(out / "samples.jsonl"))


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    return [run_eval(toy, tmp_path_factory.mktemp(f"eval{i}")) for i in range(2)]


# --------------------------------------------------------------------------------------------
# The protocol, with an oracle model
# --------------------------------------------------------------------------------------------


class Oracle:
    """Says each sample's reference continuation; its "cache" holds the token history, so rows
    that are fed the wrong token, or land in the wrong cache row, go off script."""

    def __init__(self, scripts: dict[tuple[int, ...], list[int]], vocab: int, wrong_decode_at: int | None = None):
        self.vocab, self.wrong_decode_at = vocab, wrong_decode_at
        self.head = min(len(p) for p in scripts)
        self.by_head: dict[tuple[int, ...], list[tuple[tuple[int, ...], list[int]]]] = {}
        for prompt, script in sorted(scripts.items(), key=lambda kv: -len(kv[0])):  # longest prompt first
            self.by_head.setdefault(prompt[:self.head], []).append((prompt, script))

    def _next(self, history: list[int]) -> int:
        for prompt, script in self.by_head.get(tuple(history[:self.head]), []):
            if len(history) >= len(prompt) and tuple(history[:len(prompt)]) == prompt:
                k = len(history) - len(prompt)
                return script[k] if k < len(script) else script[-1]
        return 0

    def _one_hot(self, rows: list[list[int]]) -> torch.Tensor:
        index = torch.tensor(rows)[..., None]
        return torch.zeros(*index.shape[:2], self.vocab).scatter_(-1, index, 1.0)

    def empty_cache(self, batch: int, cache_len: int):
        return torch.zeros(1, batch, 1, cache_len, 1), torch.zeros(1, batch, 1, cache_len, 1)

    def prefill(self, ids, k_cache, v_cache, last_only=False):
        k_cache = k_cache.clone()
        k_cache[0, :, 0, :ids.shape[1], 0] = ids.float()
        logits = self(ids)
        return (logits[:, -1:] if last_only else logits), k_cache, v_cache

    def decode(self, ids, position, k_cache, v_cache):
        p = int(position)
        k_cache = k_cache.clone()
        k_cache[0, :, 0, p, 0] = ids[:, 0].float()
        hist = k_cache[0, :, 0, :p + 1, 0].long().tolist()
        nxt = [self._next(h) for h in hist]
        if self.wrong_decode_at == p:
            nxt = [(t + 1) % self.vocab for t in nxt]
        return self._one_hot([[t] for t in nxt]), k_cache, v_cache

    def __call__(self, ids):
        seqs = ids.tolist()
        return self._one_hot([[self._next(s[:t + 1]) for t in range(len(s))] for s in seqs])


def oracle_setup(toy):
    requests, scripts = [], {}
    for m in toy.meta:
        row = [int(t) for t in toy.ids[m["row"]]]
        prompt = row[:m["prompt_len"]]
        scripts[tuple(prompt)] = row[m["prompt_len"]:m["length"]]
        result = evjob._reference_result(m["target"], MARKERS)
        wrapped = None if result is None else toy.tok.encode(f"<tool_result>{result}</tool_result>", add_special_tokens=False)
        requests.append(evjob.Request(prompt, wrapped))
    return requests, scripts


def decode_text(toy, gen: evjob.Generation) -> str:
    end = len(gen.tokens) - (gen.stop == "eos")
    return toy.tok.decode(gen.tokens[gen.prompt_len:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_oracle_reproduces_every_target_and_scores_perfectly(toy):
    requests, scripts = oracle_setup(toy)
    oracle = Oracle(scripts, toy.params.architecture.vocab_size)
    done: list[int] = []
    gens = evjob.generate(oracle, requests, MAX_TOTAL, eos=2, call_end=6, done=done.append)
    assert sorted(done) == list(range(len(requests)))
    assert [g.stop for g in gens] == ["eos"] * len(gens)
    texts = [decode_text(toy, g) for g in gens]
    assert texts == [m["target"] for m in toy.meta]
    for g, m in zip(gens, toy.meta):
        assert (g.injected is not None) == (m["tool_call"] is not None)
        injected = set(range(*g.injected)) if g.injected else set()
        assert set(g.generated) | injected == set(range(g.prompt_len, len(g.tokens)))
        assert evjob.check_against_forward(oracle, g, m["id"]) == {"positions": len(g.generated), "ties": 0}
    refs = [Reference(m["kind"], m["target"], m["tool_call"], tuple(m["integration"]), tuple(m["pii"])) for m in toy.meta]
    metrics = aggregate([score_sample(r, t, MARKERS)["outcome"] for r, t in zip(refs, texts)])
    assert all(v["value"] == (0 if k == "control_tool_calls" else 1.0) for k, v in metrics.items())


def test_generation_stops_at_max_total_tokens(toy):
    requests, scripts = oracle_setup(toy)
    limit = 40
    gens = evjob.generate(Oracle(scripts, toy.params.architecture.vocab_size), requests, limit, eos=2, call_end=6)
    for g, m, r in zip(gens, toy.meta, requests):
        assert len(g.tokens) <= max(limit, g.prompt_len)
        if m["length"] <= limit:
            assert g.stop == "eos" and len(g.tokens) == m["length"]
        else:
            assert g.stop == "max_total_tokens"
            assert g.injected is None or g.injected[1] < limit  # a result is fed only with room to answer
            if g.prompt_len >= limit:
                assert g.tokens == r.prompt and not g.generated
            elif len(g.tokens) < limit:  # the call ended where its result no longer fits
                assert g.tokens[-1] == 6 and g.injected is None


def test_without_a_result_the_turn_ends_at_the_call(toy):
    requests, scripts = oracle_setup(toy)
    requests = [evjob.Request(r.prompt, None) for r in requests]
    gens = evjob.generate(Oracle(scripts, toy.params.architecture.vocab_size), requests, MAX_TOTAL, eos=2, call_end=6)
    for g, m in zip(gens, toy.meta):
        assert g.stop == ("tool_call_end" if m["tool_call"] else "eos") and g.injected is None


def test_cache_path_disagreeing_with_forward_raises(toy):
    requests, scripts = oracle_setup(toy)
    oracle = Oracle(scripts, toy.params.architecture.vocab_size, wrong_decode_at=len(requests[0].prompt) + 2)
    gens = evjob.generate(oracle, requests[:1], MAX_TOTAL, eos=2, call_end=6)
    with pytest.raises(evjob.EvalJobError, match="bug in the cache path"):
        evjob.check_against_forward(oracle, gens[0], "eval-00001")


# --------------------------------------------------------------------------------------------
# The job on the toy data with a random student
# --------------------------------------------------------------------------------------------


def test_report_structure_and_counts(toy, runs):
    rep, meta = runs[0].report, toy.meta
    assert set(rep) == {"metrics", "by_kind", "counts", "stops", "protocol", "checkpoint", "role", "provenance", "seconds",
                        "placement"}
    assert rep["provenance"] == runs[0].ctx.provenance
    assert rep["checkpoint"] == {"job": "qat", "step": 7, "quantized": True}
    metrics = rep["metrics"]
    assert all(set(m) == {"value", "n"} for m in metrics.values())
    assert metrics["json_validity"]["n"] == metrics["tool_selection"]["n"] == sum(m["tool_call"] is not None for m in meta)
    assert metrics["integration_f1_lax"]["n"] == metrics["integration_f1_strict"]["n"] == sum(bool(m["integration"]) for m in meta)
    assert metrics["privacy_ok_rate"]["n"] == sum(bool(m["pii"]) for m in meta)
    assert metrics["control_tool_calls"]["n"] == sum(m["kind"] == "control" for m in meta)
    assert isinstance(metrics["control_tool_calls"]["value"], int)
    assert metrics["exact_match"]["n"] == metrics["generated_tokens_mean"]["n"] == len(meta) == 120
    kinds = Counter(m["kind"] for m in meta)
    assert rep["counts"] == {"samples": len(meta), "by_kind": dict(sorted(kinds.items()))}
    for name, m in metrics.items():
        assert sum(rep["by_kind"][k].get(name, {"n": 0})["n"] for k in kinds) == m["n"], name
    assert sum(rep["stops"].values()) == len(meta)
    assert rep["protocol"]["max_total_tokens"] == MAX_TOTAL
    assert rep["protocol"]["self_check"]["positions"] > 0
    assert runs[0].flat == {**{k: float(v["value"]) for k, v in metrics.items() if v["value"] is not None},
                            "seconds": rep["seconds"]}


def test_samples_file(toy, runs):
    samples = runs[0].samples
    assert [s["id"] for s in samples] == [m["id"] for m in toy.meta]
    by_id = {m["id"]: m for m in toy.meta}
    for s in samples:
        assert set(s) == {"id", "kind", "generated", "segments", "stop", "generated_tokens", "tool_call",
                          "tool_call_problem", "pii_leaked", "outcome"}
        assert 0 < s["generated_tokens"] <= MAX_TOTAL - by_id[s["id"]]["prompt_len"]
        rescored = score_sample(Reference(s["kind"], by_id[s["id"]]["target"], by_id[s["id"]]["tool_call"],
                                          tuple(by_id[s["id"]]["integration"]), tuple(by_id[s["id"]]["pii"])),
                                s["generated"], MARKERS)
        assert rescored["outcome"] == s["outcome"]
    assert aggregate([s["outcome"] for s in samples]) == {k: v for k, v in runs[0].report["metrics"].items()
                                                          if k != "generated_tokens_mean"}


def test_progress_events(toy, runs):
    events = runs[0].ctx.events
    assert ("start", "eval: generating", len(toy.meta)) in events
    assert sum(e[1] for e in events if e[0] == "advance") == len(toy.meta)


def test_outputs_deterministic(runs):
    a, b = runs
    assert (a.out / "samples.jsonl").read_bytes() == (b.out / "samples.jsonl").read_bytes()
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(a.report) == strip(b.report)
    assert sorted(p.name for p in a.out.iterdir()) == ["report.json", "samples.jsonl"]


def test_batches_sized_by_the_memory_budget_generate_the_same(toy, runs, tmp_path):
    """A 1 MiB budget holds a few of the toy's rows (KV cache for MAX_TOTAL positions and the prefill):
    dozens of batches instead of one, and every sample comes out the same."""
    small = run_eval(toy, tmp_path, toy.params.model_copy(update={"memory_budget_mb": 1}))
    assert (small.out / "samples.jsonl").read_bytes() == (runs[0].out / "samples.jsonl").read_bytes()
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "placement")}  # noqa: E731
    assert strip(small.report) == strip(runs[0].report)
    placement = small.report["placement"]
    assert (placement["device"], placement["dtype"], placement["memory_budget_mb"]) == ("cpu", "float32", 1)
    assert placement["batches"] > 20 and placement["largest_batch"] < 10, placement
    assert runs[0].report["placement"]["memory_budget_mb"] == evjob.EVAL_CPU_BUDGET_MB
    assert runs[0].report["placement"]["batches"] == 1  # the toy's eval fits one batch, as before


def test_last_position_prefill_generates_what_the_whole_prefill_did(toy, runs, tmp_path, monkeypatch):
    """Before batching, prefill returned logits for every position and generation read the last: forcing that
    path again gives byte-identical samples (the toy's results are today's)."""
    from runtime.model.student import Student

    whole = Student.prefill
    modes = []

    def prefill(self, ids, k, v, last_only=False):
        modes.append(torch.is_inference_mode_enabled())  # no autograd graph in generation (it cost 2 GB once)
        return whole(self, ids, k, v)

    monkeypatch.setattr(Student, "prefill", prefill)
    again = run_eval(toy, tmp_path)
    assert modes and all(modes)
    assert (again.out / "samples.jsonl").read_bytes() == (runs[0].out / "samples.jsonl").read_bytes()


def test_a_budget_too_small_for_one_sample_is_refused(toy, tmp_path):
    with pytest.raises(evjob.EvalJobError, match="too small for one sample: sample 0 needs .* MiB .*raise "
                       "training.resources.memory_gb"):
        evjob.run(toy.params.model_copy(update={"memory_budget_mb": 0}), toy.inputs, tmp_path, Ctx())


def test_needs_exactly_one_checkpoint(toy, tmp_path):
    inputs = {**toy.inputs, "train": toy.inputs["qat"]}
    with pytest.raises(evjob.EvalJobError, match="exactly one input with a 'checkpoint'"):
        evjob.run(toy.params, inputs, tmp_path, Ctx())


def test_max_total_tokens_beyond_context_refused(toy, tmp_path):
    params = toy.params.model_copy(update={"max_total_tokens": toy.params.architecture.max_context + 1})
    with pytest.raises(evjob.EvalJobError, match="max_context"):
        evjob.run(params, toy.inputs, tmp_path, Ctx())
