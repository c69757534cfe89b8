"""`modelspec run --executor ray`: the tiny plan through publish as Ray tasks on a local cluster.

Slow (a Ray cluster starts; every job kind runs), still run in CI: ray is in the test extra.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime.test_pipeline_resume import tiny_spec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# outputs that hold timings: reports, TensorBoard events, the release manifest (it hashes the reports)
TIMED = {"report", "tensorboard", "manifest"}


def ray_spec(folder: Path) -> Path:
    """The tiny spec with one prefill shape and the eval gates a tiny model cannot pass made warnings."""
    path = tiny_spec(folder)
    text = path.read_text().replace("  prefill: [64, 128, 256]", "  prefill: [64]")
    for metric in ("json_validity", "tool_selection", "integration_f1_lax", "control_tool_calls"):
        text, n = re.subn(r"(\{metric: eval\.%s,[^}]*)\}" % metric, r"\1, policy: warn}", text)
        assert n == 1, metric
    path.write_text(text)
    return path


def modelspec(*args: str, workdir: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """(the finished run, the CLI's pid). One torch thread per job, as Ray gives a 1-CPU task, so
    local and Ray runs compute bit for bit alike."""
    cmd = [sys.executable, "-m", "runtime.cli", *args, "--allow-stale", "--json", "--workdir", str(workdir)]
    env = dict(env or os.environ, OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), proc.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A one-node cluster started as an operator would (`ray start --head`), with its own token:
    (address, the environment that may reach it). Stopped with SIGINT, as Ctrl-C stops `--block`."""
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def hashes(store: Path) -> dict[str, dict[str, str]]:
    """job id -> output name -> sha256 from the completion records."""
    out = {}
    for record in (store / "jobs").glob("*/*/_complete.json"):
        data = json.loads(record.read_text())
        out[data["job"]] = {name: meta["sha256"] for name, meta in data["outputs"].items()}
    return out


def test_ray_runs_the_plan_like_local_then_noop(tmp_path):
    spec = ray_spec(tmp_path)
    ray_store, local_store = tmp_path / "ray", tmp_path / "local"

    run, cli_pid = modelspec("run", str(spec), "--executor", "ray", workdir=ray_store)
    assert run.returncode == 0, run.stderr
    jobs = json.loads(run.stdout)["jobs"]
    assert [j["id"] for j in jobs][-3:] == ["eval", "gates", "publish"] and len(jobs) == 14
    assert {j["action"] for j in jobs} == {"ran"}
    kinds = {j["kind"] for j in jobs}
    assert kinds == {"tokenizer", "dataset", "teacher", "train", "qat", "export", "convert", "verify", "parity", "eval",
                     "gates", "publish"}
    for j in jobs:  # each job ran as a task in a Ray worker process of the one local node
        w = j["worker"]
        assert w["executor"] == "ray" and w["pid"] not in (cli_pid, os.getpid()), j
        assert re.fullmatch(r"[0-9a-f]{56}", w["node_id"]) and re.fullmatch(r"[0-9a-f]{56}", w["worker_id"]), w
    assert len({j["worker"]["node_id"] for j in jobs}) == 1

    again, _ = modelspec("run", str(spec), "--executor", "ray", workdir=ray_store)
    assert again.returncode == 0, again.stderr
    assert {(j["action"], "worker" in j) for j in json.loads(again.stdout)["jobs"]} == {("cached", False)}

    # the same outputs as a local run, byte for byte, for the jobs that compute with torch (tokenizer, data, teacher
    # model and targets, KD and QAT checkpoints); the rest of the plan's equality is the store's no-op rerun above
    local, _ = modelspec("run", str(spec), "--until", "qat", workdir=local_store)
    assert local.returncode == 0, local.stderr
    on_ray, on_local = hashes(ray_store), hashes(local_store)
    assert len(on_ray) == 14 and set(on_local) == {"tokenizer", "dataset", "teacher", "train", "qat"}
    stable = {job: {n: h for n, h in outs.items() if n not in TIMED} for job, outs in on_local.items()}
    assert sum(len(v) for v in stable.values()) >= 6
    assert {job: {n: on_ray[job][n] for n in outs} for job, outs in stable.items()} == stable


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def test_a_worker_lost_mid_job_fails_that_job_cleanly(tmp_path):
    """As when a node goes: the task is not retried, the job fails, --json stays parseable, staging goes."""
    spec, store = ray_spec(tmp_path), tmp_path / "store"
    cmd = [sys.executable, "-m", "runtime.cli", "run", str(spec), "--executor", "ray", "--until", "teacher",
           "--allow-stale", "--json", "--workdir", str(store)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker of this run's cluster whose process title names the teacher task
        for pid in descendants(proc.pid):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::modelspec teacher"):
                    victim = pid
            except OSError:
                pass
    assert victim is not None, "the teacher task never started"
    time.sleep(1)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    jobs = {j["id"]: j for j in json.loads(out)["jobs"]}
    assert (jobs["tokenizer"]["action"], jobs["dataset"]["action"]) == ("ran", "ran")
    assert jobs["teacher"]["action"] == "failed" and jobs["teacher"]["error"].startswith("WorkerCrashedError"), jobs["teacher"]
    assert not any((store / "staging").iterdir()) and not (store / "jobs" / "teacher").exists()


def test_cuda_jobs_on_a_cpu_cluster_fail_before_anything_runs(tmp_path):
    spec = ray_spec(tmp_path)
    run, _ = modelspec("run", str(spec), "--executor", "ray", "--set", "training.resources.device=cuda",
                       workdir=tmp_path / "store")
    assert run.returncode == 1
    jobs = {j["id"]: j for j in json.loads(run.stdout)["jobs"]}
    refused = {i for i, j in jobs.items() if j["action"] == "failed"}
    assert refused == {"teacher", "train", "qat", "eval"}  # eval runs on the training device too
    assert "1 GPU on one node; no node of the Ray cluster has that" in jobs["train"]["error"]
    assert {j["action"] for i, j in jobs.items() if i not in refused} == {"skipped"}
    assert not any((tmp_path / "store" / "jobs").iterdir())


def test_address_runs_jobs_on_a_started_cluster(tmp_path, ray_head):
    address, env = ray_head
    spec = ray_spec(tmp_path)
    run, cli_pid = modelspec("run", str(spec), "--executor", "ray", "--address", address, "--until", "dataset",
                             workdir=tmp_path / "store", env=env)
    assert run.returncode == 0, run.stderr
    jobs = json.loads(run.stdout)["jobs"]
    assert [(j["id"], j["action"], j["worker"]["executor"]) for j in jobs] == [("tokenizer", "ran", "ray"), ("dataset", "ran", "ray")]
    assert all(j["worker"]["pid"] != cli_pid for j in jobs)
    again, _ = modelspec("run", str(spec), "--executor", "ray", "--address", address, "--until", "dataset",
                         workdir=tmp_path / "store", env=env)
    assert again.returncode == 0 and {j["action"] for j in json.loads(again.stdout)["jobs"]} == {"cached"}


def test_unreachable_address_is_an_error_with_nothing_written(tmp_path):
    port = free_port()  # nothing listens on it
    store = tmp_path / "store"
    run, _ = modelspec("run", "specs/toy.yaml", "--executor", "ray", "--address", f"127.0.0.1:{port}", workdir=store)
    assert run.returncode == 2 and run.stdout == ""
    assert f"--address: cannot reach a Ray cluster: nothing answers at 127.0.0.1:{port}" in run.stderr
    assert "nothing written" in run.stderr and not store.exists()

    local, _ = modelspec("run", "specs/toy.yaml", "--address", f"127.0.0.1:{port}", workdir=store)
    assert local.returncode == 2 and "--address needs --executor ray" in local.stderr and not store.exists()


def test_a_local_run_never_imports_ray(tmp_path):
    code = ("import sys\n"
            f"sys.argv = ['modelspec', 'run', 'specs/toy.yaml', '--dry-run', '--allow-stale', '--workdir', {str(tmp_path)!r}]\n"
            "from runtime.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
            "assert 'ray' not in sys.modules and 'runtime.ray_backend' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
