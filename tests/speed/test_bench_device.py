"""`modelspec bench-device` on a real package (the tiny pipeline's), with the reference interpreter
(CoreML cannot predict on Linux), and `modelspec verify --speed-report` binding and refusing reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import runtime.cli.main  # noqa: F401  (registers the runtime's commands)
from compiler.cli.app import app
from runtime.coreml.package import canonical_hash
from runtime.speed import report as speed
from tests.runtime.conftest import tiny_run  # noqa: F401  (the session's tiny pipeline run, shared)
from tests.speed.reports import report


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def measured(tiny_run, tmp_path_factory):
    package = next((tiny_run.store / "jobs" / "convert").glob("*/*.mlpackage"))
    out = tmp_path_factory.mktemp("bench") / "report.json"
    code, text = invoke("bench-device", str(tiny_run.spec), str(package), "--backend", "interpreter", "--prompts", "4",
                        "--max-new-tokens", "6", "--warmup", "1", "--out", str(out), "--workdir", str(tiny_run.store))
    assert code == 0, text
    return package, out, json.loads(out.read_text()), text


def test_the_interpreter_runs_the_whole_harness_into_a_report_bound_to_the_package(measured):
    package, out, rep, text = measured
    assert speed.shape_problems(rep) == []
    assert rep["package"]["canonical_hash"] == canonical_hash(package)
    assert rep["profile"] == {"name": "m1-max-64g", "memory_gb": 64.0, "sessions": 2, "context": 256,
                              "chip": "apple-m1-max"}
    assert rep["device"]["backend"] == "reference-interpreter" and rep["prompts"]["n"] == 4
    assert rep["prompts"]["ids"] == ["eval-00002", "eval-00003", "eval-00004", "eval-00005"]  # eval-00001 warmed up
    m = rep["metrics"]
    assert m["ttft_p50_ms"]["n"] == 4 and m["ttft_p50_ms"]["value"] > 0 and m["tps_p50"]["value"] > 0
    assert set(m["ttft_p50_ms_by_shape"]) <= {"64", "128", "256"} and 0 < m["decode_steps"] <= 4 * 5
    assert "speed gates refuse this report" in text


def test_verify_refuses_a_report_that_is_not_a_device_measurement_or_not_this_package(measured, tmp_path, tiny_run):
    package, out, rep, _ = measured
    base = ["verify", str(tiny_run.spec), str(package), "--no-parity", "--workdir", str(tiny_run.store)]
    code, text = invoke(*base, "--speed-report", str(out))
    assert code == 2 and "refused" in text and "not CoreML on a device" in text
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(report(package="f" * 64)))
    code, text = invoke(*base, "--speed-report", str(foreign))
    assert code == 2 and "it measured package ffffffffffff" in text


def test_verify_evaluates_the_speed_gates_on_a_bound_report_and_its_baseline(measured, tmp_path, tiny_run):
    package, _, rep, _ = measured
    pkg_hash = rep["package"]["canonical_hash"]
    now, then = tmp_path / "now.json", tmp_path / "then.json"
    now.write_text(json.dumps(report(package=pkg_hash, ttft=120.0)))  # as a Mac writes it for this package
    then.write_text(json.dumps(report(package="c" * 64, ttft=100.0, when="2026-11-01T00:00:00+00:00")))
    base = ["verify", str(tiny_run.spec), str(package), "--no-parity", "--workdir", str(tiny_run.store)]
    code, text = invoke(*base, "--speed-report", str(now), "--baseline", str(then), "--json", str(tmp_path / "v.json"))
    assert code == 0, text  # the tiny spec's only speed gate (ttft regression) is a warn gate
    assert "[speed] gate speed.ttft_p50_regression <= 0.05: 0.2 fail" in text
    row = json.loads((tmp_path / "v.json").read_text())["speed"]["gates"][0]
    assert row["outcome"] == "fail" and row["value"] == pytest.approx(0.2)
    code, text = invoke(*base, "--baseline", str(then))
    assert code == 2 and "pass both" in text
