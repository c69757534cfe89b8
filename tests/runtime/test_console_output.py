"""What `modelspec run` prints: library noise goes to the job's log, lines never wrap, and the
run ends with a summary a person acts on (gates, outputs that exist, the next command)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

from runtime.executor import JobResult
from runtime.joblog import JobLog, log_path
from runtime.progress import Reporter, job_line
from runtime.summary import lines as summary_lines


def test_the_job_log_takes_warnings_logging_prints_and_child_processes(tmp_path: Path, capfd) -> None:
    log = tmp_path / "logs" / "spec" / "convert.log"
    with JobLog(log, "convert") as jl:
        warnings.warn("torch says: this is deprecated", FutureWarning)
        import numpy as np

        with np.errstate(over="warn"):
            np.float16(60000) * np.float16(2)  # RuntimeWarning: overflow, as coremltools' passes raise
        logging.getLogger("coremltools").warning("Tuple detected at graph output")
        logging.getLogger("coremltools").info("Converting PyTorch Frontend ==> MIL Ops")
        print("chatter on stdout", flush=True)
        print("chatter on stderr", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"], check=True)
        jl.note("converting prefill_64")
    text = log.read_text()
    for expected in ("FutureWarning: torch says: this is deprecated", "RuntimeWarning: overflow",
                     "WARNING coremltools: Tuple detected", "chatter on stdout",
                     "chatter on stderr", "child out", "child err", "note: converting prefill_64", "3 warning(s)"):
        assert expected in text, (expected, text)
    assert "Converting PyTorch Frontend" not in text  # INFO is below the root logger's level, as on a console
    assert jl.warnings == 3  # two Python warnings and one logging WARNING
    out, err = capfd.readouterr()
    assert "chatter" not in out + err and "child" not in out + err and "deprecated" not in out + err
    print("after", flush=True)  # the console is back
    assert capfd.readouterr().out == "after\n"


def test_the_log_is_rewritten_per_run_and_a_failure_is_written_into_it(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    try:
        with JobLog(log, "train"):
            print("first attempt", flush=True)
            raise RuntimeError("out of memory")
    except RuntimeError:
        pass
    assert "# failed: RuntimeError: out of memory" in log.read_text()
    with JobLog(log, "train"):
        warnings.warn("again", UserWarning)
    text = log.read_text()
    assert "first attempt" not in text and "UserWarning: again" in text
    assert log_path(tmp_path, "toy-worker", "train") == tmp_path / "logs" / "toy-worker" / "train.log"


def test_a_warning_seen_by_an_earlier_job_of_the_same_worker_is_logged_again(tmp_path: Path) -> None:
    def noisy() -> None:
        warnings.warn("same place", FutureWarning)

    for name in ("a", "b"):
        with JobLog(tmp_path / f"{name}.log", name) as jl:
            noisy()
        assert jl.warnings == 1, name


def test_job_lines_are_not_wrapped_when_stderr_is_not_a_terminal(capfd) -> None:
    long_error = "ImportError: cannot import name 'RopeScalingP' from 'compiler.planning.params' (" + "/x" * 60 + ")"
    with Reporter() as rep:
        rep(("start", "train", "train", 10))  # a progress bar: lines go through rich's console
        rep(("job_done", JobResult("train", "train", "failed", 0.1, error=long_error, log="/s/logs/toy/train.log")))
        rep(("job_done", JobResult("convert", "convert", "ran", 9.3, log="/s/logs/toy/convert.log", warnings=12)))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(long_error in line and line.endswith("(log: /s/logs/toy/train.log)") for line in lines), err
    assert "    ran  convert (convert) 9.3s  (12 warnings in /s/logs/toy/convert.log)" in lines, err


def test_job_line_of_a_cached_job_names_no_log() -> None:
    assert job_line(JobResult("eval", "eval", "cached", 0.0)) == " cached  eval (eval) 0.0s"


def _gates_report(tmp_path: Path, passed: bool) -> Path:
    rows = [
        {"metric": "parity.snr_db", "op": ">=", "threshold": 55.0, "policy": "hard", "value": 95.21, "n": None, "outcome": "pass", "reason": ""},
        {"metric": "eval.integration_f1_lax", "op": ">=", "threshold": 0.99 if not passed else 0.5, "policy": "hard",
         "value": 0.61, "n": 40, "outcome": "pass" if passed else "fail", "reason": "" if passed else "0.61 is not >= 0.99"},
        {"metric": "speed.ttft_p50_regression", "op": "<=", "threshold": 0.05, "policy": "warn", "value": None, "n": None,
         "outcome": "not_run", "reason": "needs a Mac: on-device timing cannot run on this machine"},
    ]
    path = tmp_path / f"gates-{passed}.json"
    path.write_text(json.dumps({"gates": rows, "passed": passed}))
    return path


def _results(tmp_path: Path, passed: bool) -> list[JobResult]:
    (tmp_path / "convert.json").write_text(json.dumps({"size_mb": 0.61, "canonical_hash": "abcdef0123456789"}))
    logs = tmp_path / "logs" / "toy-worker"
    out = [
        JobResult("train", "train", "cached", outputs={"report": "x"}),
        JobResult("convert", "convert", "ran", 9.0, {"package": "/s/jobs/convert/k/toy-worker.mlpackage",
                                                     "report": str(tmp_path / "convert.json")}, log=str(logs / "convert.log"), warnings=12),
        JobResult("gates", "gates", "ran" if passed else "failed", 0.1, {"report": str(_gates_report(tmp_path, passed))},
                  error=None if passed else "hard gates not passed: eval.integration_f1_lax fail", log=str(logs / "gates.log"), warnings=0),
    ]
    if passed:
        out.append(JobResult("publish", "publish", "ran", 0.1, {"manifest": "/s/jobs/publish/k/manifest.json"}, log=str(logs / "publish.log")))
    return out


def test_the_summary_lists_gates_outputs_logs_and_the_publish_command(tmp_path: Path) -> None:
    text = "\n".join(summary_lines("specs/toy.yaml", _results(tmp_path, True), spec_name="toy-worker",
                                   options=[]))
    assert "every hard gate passed" in text
    assert any(line.split()[:2] == ["pass", "parity.snr_db"] and "95.21" in line and ">= 55" in line and "hard" in line
               for line in text.splitlines()), text
    assert "not run  speed.ttft_p50_regression" in text and "needs a Mac" in text
    assert "package:   /s/jobs/convert/k/toy-worker.mlpackage  (0.61 MiB, canonical hash abcdef012345)" in text
    assert "release:   /s/jobs/publish/k/manifest.json" in text
    assert "hf folder" not in text  # no such output in this run
    assert f"logs:      {tmp_path / 'logs' / 'toy-worker'}/  (warnings: convert 12)" in text
    assert "next:      modelspec publish specs/toy.yaml --to releases/toy-worker" in text
    assert "next:      modelspec export-hf specs/toy.yaml --to hf/toy-worker   (the student as a Hugging Face folder)" in text


def test_the_summary_of_a_failed_gate_names_its_fix_and_where_it_is(tmp_path: Path) -> None:
    text = "\n".join(summary_lines("specs/toy.yaml", _results(tmp_path, False), spec_name="toy-worker",
                                   options=["--workdir", "/tmp/s"]))
    assert "a hard gate did not pass" in text
    assert any(line.split()[:2] == ["FAIL", "eval.integration_f1_lax"] for line in text.splitlines()), text
    assert "release:" not in text and "modelspec publish" not in text
    next_line = next(line for line in text.splitlines() if line.startswith("next:"))
    assert "gate eval.integration_f1_lax (0.61 is not >= 0.99)" in next_line
    assert "specs/toy.yaml:" in next_line and "(gates[7])" in next_line  # file:line:col of the gate


def test_the_summary_of_a_failed_job_points_at_its_log(tmp_path: Path) -> None:
    results = [JobResult("train", "train", "failed", 0.1, error="ImportError: x", log="/s/logs/toy-worker/train.log"),
               JobResult("qat", "qat", "skipped")]
    text = "\n".join(summary_lines("specs/toy.yaml", results, spec_name="toy-worker", options=[]))
    assert "gates: not run (not in this run)" in text
    assert "next:      train failed: read /s/logs/toy-worker/train.log, fix it, then modelspec run specs/toy.yaml" in text


def test_an_hf_folder_is_listed_when_a_job_made_one(tmp_path: Path) -> None:
    results = [JobResult("export-hf", "export_hf", "ran", 1.0, {"folder": "/s/jobs/export_hf/k/hf"})]
    text = "\n".join(summary_lines("specs/toy.yaml", results, spec_name="toy-worker", options=[]))
    assert "hf folder: /s/jobs/export_hf/k/hf" in text
