"""specs/toy-judge.yaml end to end on CPU: the judge trains its verdict head, exports it, passes its gates and publishes.

One real run (tokenizer, judge dataset, KD, QAT, the prefill export with its `judge` output, conversion, verify,
parity of the verdict head, the judge eval, gates, publish) into a temporary store, then what it measured and
wrote. Slow (about a minute and a half on 2 cores), run in CI; its own xdist group, so it runs beside the toy's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_run import shared_run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("toy-judge-e2e")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The one run, shared by every xdist worker of the session (tests/shared_run.py)."""
    return shared_run(tmp_path_factory, "toy-judge-e2e", lambda store: subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", "specs/toy-judge.yaml", "--workdir", str(store), "--json"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=900))


def _report(run: dict, job: str) -> dict:
    return json.loads(Path(run["jobs"][job]["outputs"]["report"]).read_text())


def test_the_judge_runs_without_a_teacher_job_and_passes_every_gate(run: dict) -> None:
    assert not set(run["jobs"]) & {"teacher", "generate"}
    assert {j["action"] for j in run["jobs"].values()} == {"ran"}
    gates = _report(run, "gates")
    outcomes = {g["metric"]: g["outcome"] for g in gates["gates"]}
    assert gates["passed"] and set(outcomes.values()) == {"pass"}, outcomes
    assert {"eval.pairwise_accuracy", "eval.position_bias_rate", "eval.clause_f1_micro", "eval.verdict_json_validity",
            "parity.judge_snr_db", "parity.judge_sign_agreement"} <= set(outcomes)


def test_the_judge_metrics_are_measured_over_both_orders_of_every_pair(run: dict) -> None:
    dataset, ev = _report(run, "dataset"), _report(run, "eval")
    assert dataset["dropped_by_reason"] == {} and dataset["splits"]["eval"]["by_kind"] == {"clauses": 120, "pairwise": 120}
    m, counts = ev["metrics"], ev["counts"]
    assert counts["pair_rows"] == 2 * counts["pairs_in_both_orders"] == m["pairwise_accuracy"]["n"] == 240
    assert m["pairwise_accuracy"]["value"] >= 0.8 and m["position_bias_rate"]["value"] <= 0.2
    assert m["clause_f1_micro"]["value"] >= 0.7 and set(ev["clauses"]) == {"privacy", "format"}
    assert m["verdict_json_validity"] == {"value": 1.0, "n": 360}
    # the verdict terms trained: the pairwise loss fell well below chance (log 2)
    train = _report(run, "train")
    assert train["val_pairwise"] < 0.3 and "val_token_accuracy" not in train


def test_the_package_exports_the_verdict_head_and_parity_checks_it(run: dict) -> None:
    verify, parity = _report(run, "verify"), _report(run, "parity-prefill")
    assert verify["passed"] and not verify["mismatches"]
    outputs = [o["name"] for o in _report(run, "convert")["functions"]["prefill"]["package"]["outputs"]]
    assert outputs == ["logits", "judge"]
    assert parity["passed"] and parity["metrics"]["judge_snr_db"]["value"] > 55
    assert parity["metrics"]["judge_sign_agreement"]["value"] >= 0.99


def test_the_release_tells_an_app_how_to_ask_for_a_verdict(run: dict) -> None:
    from runtime.data.judge import PAIR

    app = Path(run["jobs"]["publish"]["outputs"]["app"]) / "runtime_config.json"
    config = json.loads(app.read_text())
    assert config["role"] == "judge" and config["vocab_size"] == 512 and config["decode_function"] is None
    judge = config["judge"]
    assert judge["clauses"] == ["privacy", "format"] and judge["layout"]["pair"] == PAIR and judge["output"] == "judge"
    assert judge["verdict_schema"]["required"] == ["clauses", "violated"]
