"""Speed reports: which count for a package, which are refused and why, the baseline, the metrics,
and the gates job reading them from the spec's speed folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.core.errors import SpecError
from compiler.planning.params import GateP, GatesParams, ProfileP
from runtime.jobs import gates as gjob
from runtime.keys import external_inputs
from runtime.speed import report as speed
from tests.runtime.helpers import Ctx
from tests.runtime.toy_exports import toy
from tests.speed.reports import BINDING, PROFILES, report, write

OTHER = "b" * 64


@pytest.mark.parametrize("rep, reason", [
    (report(package=OTHER), "it measured package bbbbbbbbbbbb, this package is aaaaaaaaaaaa"),
    (report(profile="a17-pro"), "profile 'a17-pro', which the spec does not have"),
    (report(chip_id="apple-m2"), "profile 'm1-max-64g' changed since it was measured (chip: apple-m2 then, apple-m1-max now)"),
    (report(backend="reference-interpreter"), "not CoreML on a device"),
    (report(units="cpu_only"), "compute units 'cpu_only', the spec loads with 'all'"),
    (report(chip="Apple M2"), "it ran on Apple M2, profile 'm1-max-64g' is an Apple M1 Max"),
    (report(chip=None), "profile 'm1-max-64g' changed since it was measured (chip: None then, apple-m1-max now)"),
])
def test_a_report_for_another_package_profile_or_device_is_refused(rep, reason):
    assert reason in speed.refusal(rep, BINDING)


def test_a_report_as_a_mac_writes_it_is_bound():
    assert speed.refusal(report(), BINDING) is None
    assert speed.refusal(report(), BINDING, as_baseline=True) == "it measured this package"


@pytest.mark.parametrize("mangle, problem", [
    (lambda r: r.update(format="modelspec.speed/0"), "format is 'modelspec.speed/0'"),
    (lambda r: r["package"].pop("canonical_hash"), "'package.canonical_hash' is missing"),
    (lambda r: r["metrics"].update(tps_p50={"value": float("nan"), "n": 3}), "metric .tps_p50. is neither"),
    (lambda r: r.pop("measured_at"), "'measured_at' is missing"),
])
def test_a_malformed_report_is_not_read(tmp_path, mangle, problem):
    rep = report()
    mangle(rep)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rep, allow_nan=True))
    with pytest.raises(speed.SpeedReportError, match=problem):
        speed.load(path)


def test_the_newest_bound_report_counts_and_the_newest_earlier_one_of_another_package_is_the_baseline(tmp_path):
    d = tmp_path / "speed"
    files = [
        write(d, "old.json", report(package=OTHER, ttft=100.0, tps=40.0, when="2026-11-01T00:00:00+00:00")),
        write(d, "older.json", report(package="c" * 64, ttft=50.0, when="2026-10-01T00:00:00+00:00")),
        write(d, "other-chip.json", report(package=OTHER, chip="Apple M2", when="2026-11-20T00:00:00+00:00")),
        write(d, "later-other.json", report(package=OTHER, when="2026-12-24T00:00:00+00:00")),
        write(d, "first.json", report(ttft=95.0, when="2026-11-30T00:00:00+00:00")),
        write(d, "now.json", report(ttft=110.0, tps=30.0)),
        write(d, "interp.json", report(backend="reference-interpreter", when="2026-12-02T00:00:00+00:00")),
        write(d, "junk.json", {"format": "something else"}),
    ]
    found = speed.sort_reports(files, BINDING)
    assert found.paths == {"m1-max-64g": d / "now.json"}
    assert found.baselines["m1-max-64g"]["measured_at"] == "2026-11-01T00:00:00+00:00"
    assert any("interp.json" in r and "not CoreML" in r for r in found.refused)
    assert any("junk.json" in r for r in found.refused)
    assert not any("old.json" in r for r in found.refused)  # another package's report is history, not an error
    ttft = speed.metric("ttft_p50_regression", found.bound["m1-max-64g"], found.baselines["m1-max-64g"])
    tps = speed.metric("tps_p50_regression", found.bound["m1-max-64g"], found.baselines["m1-max-64g"])
    assert ttft["value"] == pytest.approx(0.10) and ttft["baseline"] == OTHER  # 110 ms vs 100 ms: 10 % slower
    assert tps["value"] == pytest.approx(0.25)  # 30 vs 40 tokens/s: a 25 % drop is a positive regression
    assert "no baseline" in speed.metric("ttft_p50_regression", found.bound["m1-max-64g"], None)["not_run"]


def gate(metric: str, op: str, value: float, policy: str = "hard", min_n: int | None = None) -> GateP:
    return GateP(metric=metric, op=op, value=value, policy=policy, min_n=min_n, kind="", producer="speed")


def run_gates(spec_dir: Path, out: Path, gates: list[GateP], profiles: tuple[str, ...] = ("m1-max-64g",)) -> dict:
    params = GatesParams(gates=gates, speed_reports="speed/toy-worker", compute_units="all",
                         profiles=[ProfileP(name=p, **PROFILES[p]) for p in profiles])
    src = out / "convert"
    src.mkdir(parents=True)
    (src / "report.json").write_text(json.dumps({"canonical_hash": "a" * 64, "size_mb": 1.0}))
    gjob.run(params, {"convert": {"report": src / "report.json"}}, out, Ctx(spec_dir=spec_dir))
    return json.loads((out / "report.json").read_text())


def test_the_gates_job_passes_speed_gates_on_a_bound_report_and_says_how_to_get_one_without(tmp_path):
    gates = [gate("speed.ttft_p50_ms", "<=", 100, min_n=50), gate("speed.tps_p50", ">=", 20),
             gate("speed.ttft_p50_regression", "<=", 0.05, policy="warn")]
    empty = run_gates(tmp_path, tmp_path / "none", gates)
    assert [g["outcome"] for g in empty["gates"]] == ["not_run"] * 3 and empty["passed"] is False
    assert "modelspec bench-device SPEC PACKAGE --profile m1-max-64g" in empty["gates"][0]["reason"]
    assert "speed/toy-worker/" in empty["gates"][0]["reason"]

    folder = tmp_path / "speed" / "toy-worker"
    write(folder, "interp.json", report(backend="reference-interpreter"))
    refused = run_gates(tmp_path, tmp_path / "refused", gates)
    assert refused["passed"] is False and "not CoreML on a device" in refused["gates"][0]["reason"]

    write(folder, "now.json", report(ttft=80.0, tps=30.0))
    bound = run_gates(tmp_path, tmp_path / "bound", gates)
    assert [g["outcome"] for g in bound["gates"]] == ["pass", "pass", "not_run"] and bound["passed"] is True
    assert (bound["gates"][0]["value"], bound["gates"][0]["n"]) == (80.0, 50)
    assert bound["speed_reports"]["bound"] == {"m1-max-64g": str(folder / "now.json")}

    write(folder, "then.json", report(package=OTHER, ttft=70.0, when="2026-11-01T00:00:00+00:00"))
    regressed = run_gates(tmp_path, tmp_path / "regressed", gates)
    row = regressed["gates"][2]
    assert row["outcome"] == "fail" and row["value"] == pytest.approx(80 / 70 - 1) and regressed["passed"] is True


def test_every_profile_needs_a_report_and_the_worst_profile_counts(tmp_path):
    folder = tmp_path / "speed" / "toy-worker"
    write(folder, "max.json", report(ttft=60.0))
    gates = [gate("speed.ttft_p50_ms", "<=", 100)]
    one = run_gates(tmp_path, tmp_path / "one", gates, ("m1-max-64g", "m3-pro-36g"))
    assert one["gates"][0]["outcome"] == "not_run" and "'m3-pro-36g'" in one["gates"][0]["reason"]
    write(folder, "pro.json", report(profile="m3-pro-36g", chip="Apple M3 Pro", ttft=130.0))
    both = run_gates(tmp_path, tmp_path / "both", gates, ("m1-max-64g", "m3-pro-36g"))
    assert both["gates"][0]["outcome"] == "fail" and both["gates"][0]["value"] == 130.0
    assert both["gates"][0]["by_job"] == {"m1-max-64g": 60.0, "m3-pro-36g": 130.0}


def test_a_new_report_changes_the_gates_job_key(tmp_path):
    params = toy().job("gates").job.params.model_dump(mode="json")
    assert params["speed_reports"] == "speed/toy-worker" and params["compute_units"] == "all"
    before = external_inputs("gates", params, tmp_path)
    write(tmp_path / "speed" / "toy-worker", "r.json", report())
    after = external_inputs("gates", params, tmp_path)
    assert set(before) == {"speed/toy-worker"} and after != before


@pytest.mark.parametrize("overrides, message", [
    (["gates[12].metric=speed.tps_p50", "gates[12].op=>=", "gates[12].value=2000000"],
     r"speed.tps_p50 >= 2e\+06 can never pass on profile 'm1-max-64g' \(Apple M1 Max\): a decode step reads 0.32 MB "
     r"of weights and 400 GB/s moves them at most 1251001 times a second"),
    (["gates[12].metric=speed.ttft_p50_ms", "gates[12].value=0.001"],
     "a 64-token prefill is 0.00 TFLOP, at least 0 ms"),
    (["deployment.profiles[0].chip=apple-m1-maks"], "unknown chip 'apple-m1-maks'"),
])
def test_a_speed_gate_no_device_could_pass_is_refused_at_compile(overrides, message):
    with pytest.raises(SpecError, match=message):
        toy(*overrides)


def test_a_decode_speed_gate_on_a_prefill_only_spec_is_refused_at_compile():
    from compiler.output.build import compile_one

    judge = Path(__file__).resolve().parents[2] / "specs" / "judge-4b.yaml"
    with pytest.raises(SpecError, match="speed.tps_p50 measures decode, and shapes.decode.enabled is false"):
        compile_one(str(judge), ["gates[6].metric=speed.tps_p50", "gates[6].op=>=", "gates[6].value=1"])


def test_the_shipped_specs_speed_gates_leave_room_on_their_chips():
    """Every shipped spec names its profiles' chips, so its speed gates were checked against them."""
    from compiler.output.build import compile_one

    for path in sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml")):
        spec = compile_one(str(path), []).spec
        assert all(p.chip for p in spec.deployment.profiles), path.name
