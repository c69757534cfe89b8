"""The gates job: outcomes per gate from producers' reports on disk, policies, the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.planning.params import GateP, GatesParams
from runtime.jobs import gates as gjob
from tests.runtime.conftest import toy_params
from tests.runtime.helpers import Ctx


def gate(metric: str, op: str, value: float, policy: str = "hard", min_n: int | None = None) -> GateP:
    kind, producer = {"parity": ("db", "parity"), "eval": ("rate", "eval"), "package": ("megabytes", "convert"),
                      "speed": ("relative", "speed")}[metric.split(".")[0]]
    return GateP(metric=metric, op=op, value=value, policy=policy, min_n=min_n, kind=kind, producer=producer)


def write(root: Path, job_id: str, report: dict) -> dict[str, Path]:
    folder = root / job_id
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    return {"report": folder / "report.json"}


def run(tmp_path: Path, gates: list[GateP], reports: dict[str, dict]) -> tuple[dict, dict]:
    inputs = {job: write(tmp_path / "in", job, rep) for job, rep in reports.items()}
    out = tmp_path / "out"
    out.mkdir()
    ctx = Ctx()
    metrics = gjob.run(GatesParams(gates=gates), inputs, out, ctx)
    return metrics, json.loads((out / "report.json").read_text())


REPORTS = {
    "eval": {"metrics": {"json_validity": {"value": 0.95, "n": 84}, "control_tool_calls": {"value": 0, "n": 18}}},
    "convert": {"size_mb": 1.4, "canonical_hash": "abc"},
    "parity-prefill-64": {"metrics": {"snr_db": {"value": 70.0}}},
    "parity-decode": {"metrics": {"snr_db": {"value": 58.0}}},
}


def test_every_outcome_with_value_n_threshold_and_policy(tmp_path):
    gates = [gate("eval.json_validity", ">=", 0.9, min_n=50), gate("eval.control_tool_calls", "==", 0),
             gate("package.size_mb", "<=", 1.0), gate("parity.snr_db", ">=", 55),
             gate("speed.ttft_p50_regression", "<=", 0.05, policy="warn"), gate("eval.json_validity", ">=", 0.9, min_n=100)]
    metrics, report = run(tmp_path, gates, REPORTS)
    rows = report["gates"]
    assert [r["outcome"] for r in rows] == ["pass", "pass", "fail", "pass", "not_run", "not_run"]
    assert (rows[0]["value"], rows[0]["n"], rows[0]["threshold"], rows[0]["policy"]) == (0.95, 84, 0.9, "hard")
    assert rows[2]["reason"] == "1.4 is not <= 1"
    assert rows[3]["value"] == 58.0 and rows[3]["by_job"] == {"parity-decode": 58.0, "parity-prefill-64": 70.0}
    assert "speed report" in rows[4]["reason"] and rows[4]["policy"] == "warn"  # tests/speed
    assert "min_n=100" in rows[5]["reason"]
    assert report["passed"] is False and report["hard_not_passed"] == ["package.size_mb", "eval.json_validity"]
    assert report["package_hash"] == "abc"
    assert metrics["_verdict"]["ok"] is False and "package.size_mb fail" in metrics["_verdict"]["message"]


def test_warn_gates_never_fail_the_verdict(tmp_path):
    gates = [gate("package.size_mb", "<=", 1.0, policy="warn"), gate("speed.ttft_p50_regression", "<=", 0.05, policy="warn")]
    metrics, report = run(tmp_path, gates, REPORTS)
    assert report["passed"] is True and metrics["_verdict"]["ok"] is True and report["warnings"] == [
        "package.size_mb", "speed.ttft_p50_regression"]


@pytest.mark.parametrize("reports, reason", [
    ({}, "no 'parity' job in this plan"),
    ({"parity-decode": {"metrics": {"snr_db": {"not_run": "op 'foo' unknown"}}}}, "op 'foo' unknown"),
    ({"parity-decode": {"metrics": {}}}, "has no 'snr_db'"),
    ({"parity-decode": {"metrics": {"snr_db": {"value": "high"}}}}, "no numeric value"),
])
def test_a_metric_that_could_not_be_measured_is_not_run_with_the_reason(tmp_path, reports, reason):
    _, report = run(tmp_path, [gate("parity.snr_db", ">=", 55)], reports)
    assert report["gates"][0]["outcome"] == "not_run" and reason in report["gates"][0]["reason"]
    assert report["passed"] is False


def test_toy_gates_params_evaluate(tmp_path):
    params = GatesParams.model_validate(toy_params("gates"), strict=False)
    _, report = run(tmp_path, list(params.gates), REPORTS)
    assert len(report["gates"]) == len(params.gates)
    assert {r["outcome"] for r in report["gates"]} <= {"pass", "fail", "not_run"}
