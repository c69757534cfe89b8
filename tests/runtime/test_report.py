"""`modelspec report`: the page from a store, without running the pipeline.

A store is filled with completion records for the toy plan's keys (reports written by hand in
the shapes the jobs write), so these tests take seconds; the page of a real run, rendered in
Chromium, is tested in tests/test_toy_end_to_end.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from runtime.keys import job_keys
from runtime.plan import load
from runtime.report import svg
from runtime.report.collect import load as collect
from runtime.report.collect import size_by_module, training_series
from runtime.report.page import render
from runtime.store import Store

ROOT = Path(__file__).resolve().parents[2]
SPEC = "specs/toy.yaml"


def modelspec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _metrics_rows(start: int, end: int) -> str:
    rows = []
    for step in range(start, end):
        row = {"step": step, "stage": "kd", "lr": 1e-3 * min(1.0, (step + 1) / 10), "seq_len": 64, "tokens": 512, "grad_norm": 1.0,
               "loss": {"kl": 3.0 * math.exp(-step / 30), "ce_ground_truth": 2.0 * math.exp(-step / 50), "total": 5.0 * math.exp(-step / 40)},
               "weight": {"kl": 1.0, "ce_ground_truth": 0.5}}
        if step % 10 == 0:
            row["grad_norm_by_loss"] = {"kl": 0.5 + step / 100, "ce_ground_truth": 0.2}
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def _write_outputs(job: str, kind: str, folder: Path, outputs: dict[str, str], hostile: str) -> None:
    for name, rel in outputs.items():
        path = folder / rel
        if name == "report":
            continue
        if "." in Path(rel).name:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_metrics_rows(0, 120) if (name == "metrics" and kind == "train")
                            else _metrics_rows(120, 160) if name == "metrics" else "x")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "f").write_text("x")
    report: dict = {}
    if kind in ("train", "qat"):
        report = {"final_loss": {"total": 0.4}, "val_loss": 0.5, "val_token_accuracy": 0.8, "seconds_per_step": 0.05,
                  "grad_balance_alerts": 1, "grad_balance_first_alerts": [{"step": 40, "term": "kl", "ratio": 12.5}]}
    elif kind == "eval":
        report = {"metrics": {"json_validity": {"value": 0.95, "n": 60}, "tool_selection": {"value": 0.9, "n": 60},
                              "control_tool_calls": {"value": 0, "n": 20}},
                  "by_kind": {"tool_call": {"json_validity": {"value": 0.95, "n": 60}, "tool_selection": {"value": 0.9, "n": 60}},
                              hostile: {"control_tool_calls": {"value": 0, "n": 20}}},
                  "counts": {"samples": 80}}
    elif kind == "parity":
        fn = job.removeprefix("parity-").replace("-", "_")
        report = {"function": fn, "metrics": {"snr_db": {"value": 95.0}, "quant_snr_db": {"value": 40.0},
                                              "fp16_snr_db": {"value": 70.0}, "top1_agreement": {"value": 1.0}},
                  "checks": [{"name": "causality", "passed": True, "message": "ok"}]}
    elif kind == "convert":
        report = {"size_mb": 0.61, "canonical_hash": "abc"}
    elif kind == "gates":
        report = {"passed": False, "gates": [
            {"metric": "parity.snr_db", "op": ">=", "threshold": 55.0, "policy": "hard", "value": 95.0, "n": None, "outcome": "pass", "reason": ""},
            {"metric": "eval.json_validity", "op": ">=", "threshold": 0.99, "policy": "hard", "value": 0.95, "n": 60, "outcome": "fail",
             "reason": f"0.95 is not >= 0.99 {hostile}"}]}
    if "report" in outputs:
        (folder / outputs["report"]).write_text(json.dumps(report))


HOSTILE = "<script>alert(1)</script>{{ 7*7 }}"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store with every toy job but publish and verify complete (publish 'not run')."""
    root = tmp_path_factory.mktemp("report-store")
    store = Store(root / "store")
    plan, contracts = load(SPEC, [], store.root)
    keys = job_keys(plan)
    for pj in plan.jobs:
        if pj.kind in ("publish", "verify"):
            continue
        staging = store.new_staging(keys[pj.id].key)
        _write_outputs(pj.id, pj.kind, staging, pj.outputs, HOSTILE)
        store.commit(staging, pj.kind, keys[pj.id].key, pj.outputs, {"job": pj.id, "kind": pj.kind, "seconds": 1.5})
    return {"root": root, "store": store, "plan": plan, "contracts": contracts}


class _Counter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, list[dict]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.setdefault(tag, []).append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_has_every_section_with_data(filled: dict) -> None:
    data = collect(filled["plan"], filled["contracts"], filled["store"], SPEC)
    html = render(data)
    page = _Counter()
    page.feed(html)
    paths = [p for p in page.tags["path"] if p.get("class") == "series"]
    series = sorted((p["data-series"], int(p["data-points"])) for p in paths)
    # train (steps 0..119) and qat (120..159) on one schedule: loss terms and lr per step, grad norms every 10 steps
    assert series == [("ce_ground_truth", 16), ("ce_ground_truth", 160), ("kl", 16), ("kl", 160), ("lr", 160), ("total", 160)]
    assert html.count(">qat starts</text>") == 3  # the marker on each training chart
    text = "".join(page.text)
    assert "every hard gate passed" not in text and "a hard gate did not pass" in text
    assert [r.get("class") for r in page.tags["tr"]].count("gate") == 2
    assert [r.get("class") for r in page.tags["tr"]].count("parity-fn") == 5  # 3 prefill, decode, verify
    assert [r.get("class") for r in page.tags["tr"]].count("size-module") >= 8
    assert [r.get("class") for r in page.tags["tr"]].count("eval-kind") == 3  # all + 2 kinds
    assert len([r for r in page.tags["rect"] if r.get("class") == "bar"]) >= 12 + 8  # parity + size bars
    assert "package on disk" in text and "0.610 MiB" in text
    assert "step=40, term=kl, ratio=12.5" in text  # the first grad-balance alert
    jobs = dict(re.findall(r'<tr class="job"><td><code>([^<]+)</code></td><td>[^<]*</td><td class="[^"]+">([^<]+)</td>', html))
    assert jobs["publish"] == "not run" and jobs["train"] == "done", jobs


def test_spec_strings_are_text_on_the_page(filled: dict) -> None:
    html = render(collect(filled["plan"], filled["contracts"], filled["store"], SPEC), description=HOSTILE)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "{{ 7*7 }}" in html and "49" not in re.sub(r"[\d.]+49|49[\d.]+", "", html.split("<main>")[0])
    assert "<script" not in html.lower()  # the page itself has no script either


def test_the_command_writes_the_page_and_says_where(filled: dict) -> None:
    out = filled["root"] / "page.html"
    proc = modelspec("report", SPEC, "--workdir", str(filled["store"].root), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    jobs = len(filled["plan"].jobs)
    assert answer["report"] == str(out) and answer["jobs"] == jobs and answer["jobs_with_results"] == jobs - 2  # not publish, verify
    assert out.read_text().startswith("<!DOCTYPE html>")
    default = modelspec("report", SPEC, "--workdir", str(filled["store"].root))
    assert default.returncode == 0 and (filled["store"].root / "reports" / "toy-worker.html").is_file(), default.stderr
    assert "toy-worker.html" in default.stderr


def test_a_missing_store_or_spec_is_bad_input(tmp_path: Path) -> None:
    proc = modelspec("report", SPEC, "--workdir", str(tmp_path / "none"))
    assert proc.returncode == 2 and "no store at" in proc.stderr
    assert not (tmp_path / "none").exists()
    (tmp_path / "store" / "jobs").mkdir(parents=True)
    proc = modelspec("report", "specs/nope.yaml", "--workdir", str(tmp_path / "store"))
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr


def test_an_empty_store_says_not_run_everywhere(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    plan, contracts = load(SPEC, [], store.root)
    html = render(collect(plan, contracts, store, SPEC))
    assert html.count("not run") >= 5
    assert "weight bytes per module under the recipe" in html  # the recipe is known before anything ran


def test_training_series_and_sizes() -> None:
    rows = [{"step": 0, "lr": 0.1, "loss": {"kl": 2.0, "total": 3.0}, "grad_norm_by_loss": {"kl": 1.0}},
            {"step": 1, "lr": 0.2, "loss": {"kl": 1.0, "total": 2.0}, "val": {"total": 2.5, "token_accuracy": 0.5, "rows": 50}}]
    s = training_series(rows)
    assert s["loss"]["kl"] == [(0.0, 2.0), (1.0, 1.0)] and s["lr"]["lr"] == [(0.0, 0.1), (1.0, 0.2)]
    assert s["grad_norm_by_loss"] == {"kl": [(0.0, 1.0)]}
    assert s["val"] == {"total": [(1.0, 2.5)], "token_accuracy": [(1.0, 0.5)]}
    groups = size_by_module({"modules": {"layers.0.mlp.up_proj": {"bytes": 10, "dtype": "int4", "granularity": "per_block", "block_size": 32},
                                         "layers.1.mlp.up_proj": {"bytes": 10, "dtype": "int4", "granularity": "per_block", "block_size": 32},
                                         "embed_tokens": {"bytes": 5, "dtype": "none"}}})
    assert [(g["group"], g["count"], g["bytes"], g["granularity"]) for g in groups] == [
        ("layers.*.mlp.up_proj", 2, 20.0, "per_block/32"), ("embed_tokens", 1, 5.0, "")]


def test_charts_escape_their_text_and_thin_long_series() -> None:
    chart = str(svg.line_chart({"<b>": [(i, 1.0 / (i + 1)) for i in range(5000)]}, title="a & b"))
    assert "<b>" not in chart and "&lt;b&gt;" in chart and "a &amp; b" in chart
    assert 'data-points="800"' in chart
    assert str(svg.line_chart({}, title="x")) == '<p class="empty">no data</p>'
    bars = str(svg.bar_chart([("x", 1.0, "n=3"), ("y", float("nan"), "")], title="t", threshold=(0.5, "gate")))
    assert bars.count('class="bar"') == 1 and "gate" in bars
