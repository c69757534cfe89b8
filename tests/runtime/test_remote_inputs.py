"""Remote inputs (runtime/remote) against a real S3-compatible server on loopback: moto in server mode.

The toy's data (train, eval, tool registry) is uploaded to a bucket and the spec names it by
s3:// URI; credentials and the endpoint are only in the environment (AWS_*), as a user's would be.
- Cache keys follow the objects' ETags: an unchanged object keeps every job cached, a changed one
  invalidates exactly the jobs that read it.
- `modelspec run --until dataset` reads the data from the bucket; the copies land in the store once
  and a rerun downloads nothing.
- A missing object, no credentials, bad credentials (a second server that enforces them) and an
  unreachable endpoint each exit 2 with one clear line, before any job runs or any file is fetched; a URI with
  credentials in it is refused at validate; the secret is never in a plan, a record, a log or an error.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
from moto.server import ThreadedMotoServer  # noqa: E402

from compiler.output.build import compile_one  # noqa: E402
from runtime.keys import job_keys  # noqa: E402
from runtime.plan import Plan  # noqa: E402
from runtime.remote import RemoteInputError, fetch, version  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "modelspec-test"
SECRET = "s3cr3t-ZmFrZS1zZWNyZXQtZm9yLXRlc3Rz"
FILES = {"train": "data/toy/train.jsonl", "eval": "data/toy/eval.jsonl", "tool_registry": "data/toy/tools.json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "AKIATESTKEY", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent", **extra}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 holding the toy's data; the environment points at it for the module."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _env(endpoint)}
    os.environ.update(_env(endpoint))
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    for rel in FILES.values():
        client.upload_file(str(ROOT / "specs" / rel), BUCKET, f"toy/{Path(rel).name}")
    yield {"endpoint": endpoint, "client": client}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _uri(field: str) -> str:
    return f"s3://{BUCKET}/toy/{Path(FILES[field]).name}"


def remote_spec(folder: Path, **override: str) -> Path:
    """specs/toy.yaml with data.train, data.eval and data.tool_registry in the bucket."""
    text = (ROOT / "specs" / "toy.yaml").read_text()
    for field, rel in FILES.items():
        old = f"  {field}: {rel}"
        assert old in text, old
        text = text.replace(old, f"  {field}: {override.get(field, _uri(field))}")
    if not (folder / "data").exists():
        shutil.copytree(ROOT / "specs" / "data", folder / "data")
    path = folder / "remote.yaml"
    path.write_text(text)
    return path


def _keys(spec: Path) -> dict:
    return job_keys(Plan.from_compiled(compile_one(str(spec), [])))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_keys_follow_the_objects_etags(s3, tmp_path):
    spec = remote_spec(tmp_path)
    before = _keys(spec)
    ext = before["dataset"].external
    assert set(ext) == {_uri(f) for f in FILES}
    assert all(v.startswith("remote:ETag=") for v in ext.values())
    assert _keys(spec)["dataset"].key == before["dataset"].key  # unchanged objects: the same keys
    s3["client"].put_object(Bucket=BUCKET, Key="toy/eval.jsonl", Body=(ROOT / "specs" / FILES["eval"]).read_bytes() + b"\n")
    try:
        after = _keys(spec)
        changed = {j for j in before if before[j].key != after[j].key}
        assert "dataset" in changed and "tokenizer" not in changed  # eval is read by the dataset job only
        assert after["dataset"].external[_uri("eval")] != ext[_uri("eval")]
        assert after["dataset"].external[_uri("train")] == ext[_uri("train")]
    finally:
        s3["client"].upload_file(str(ROOT / "specs" / FILES["eval"]), BUCKET, "toy/eval.jsonl")


def test_fetch_downloads_once_and_refuses_a_changed_object(s3, tmp_path):
    uri = _uri("tool_registry")
    v = version(uri)
    local = fetch(uri, v, tmp_path)
    assert local.read_bytes() == (ROOT / "specs" / FILES["tool_registry"]).read_bytes()
    stamp = local.stat().st_mtime_ns
    assert fetch(uri, v, tmp_path) == local and local.stat().st_mtime_ns == stamp  # not downloaded again
    assert [p.name for p in local.parent.iterdir() if p.name.startswith(".partial")] == []
    with pytest.raises(RemoteInputError, match="changed since this run computed its cache keys"):
        fetch(uri, "ETag=stale", tmp_path)


def test_run_reads_the_bucket_and_a_rerun_downloads_nothing(s3, tmp_path):
    spec, store = remote_spec(tmp_path), tmp_path / "store"
    first = cli("run", str(spec), "--until", "dataset", "--allow-stale", "--json", "--workdir", str(store))
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = {j["id"]: j for j in json.loads(first.stdout)["jobs"]}
    assert jobs["dataset"]["action"] == "ran"
    copies = sorted(p.name for p in (store / "remote").glob("*/*") if p.name != "source.json")
    assert copies == ["eval.jsonl", "tools.json", "train.jsonl"]
    report = json.loads(Path(jobs["dataset"]["outputs"]["report"]).read_text())
    assert report  # the dataset job wrote its report from the bucket's data
    stamps = {p: p.stat().st_mtime_ns for p in (store / "remote").glob("*/*")}
    again = cli("run", str(spec), "--until", "dataset", "--allow-stale", "--json", "--workdir", str(store))
    assert again.returncode == 0, again.stderr[-3000:]
    assert {j["action"] for j in json.loads(again.stdout)["jobs"]} == {"cached"}
    assert {p: p.stat().st_mtime_ns for p in (store / "remote").glob("*/*")} == stamps
    for path in store.rglob("*"):  # the secret is in no plan, record, index, log or copy
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in first.stdout + first.stderr + again.stdout + again.stderr


@pytest.mark.parametrize("case", ["missing", "no_credentials", "unreachable"])
def test_unreadable_remote_inputs_exit_2_with_one_clear_line(s3, tmp_path, case):
    store = tmp_path / "store"
    env: dict[str, str] = {}
    if case == "missing":
        spec = remote_spec(tmp_path, eval=f"s3://{BUCKET}/toy/nope.jsonl")
        expect = f"'s3://{BUCKET}/toy/nope.jsonl': no such object"
    elif case == "no_credentials":
        spec = remote_spec(tmp_path)
        env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
        expect = "no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    else:
        spec = remote_spec(tmp_path)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
        expect = "is unreachable"
    start = time.perf_counter()
    proc = cli("run", str(spec), "--until", "dataset", "--allow-stale", "--workdir", str(store), env=env)
    took = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expect in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr
    # nothing run or fetched: at most the plan cache `load` keeps for a valid spec
    assert not store.exists() or sorted(p.name for p in store.iterdir()) == ["plans"], sorted(store.iterdir())
    assert took < 60


def test_bad_credentials_are_refused_by_a_server_that_checks_them(tmp_path):
    """moto_server with INITIAL_NO_AUTH_ACTION_COUNT=0 checks every request's key against its IAM users."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        saved = {k: os.environ.get(k) for k in _env(endpoint)}
        os.environ.update(_env(endpoint))
        try:
            with pytest.raises(RemoteInputError) as info:
                version(f"s3://{BUCKET}/toy/train.jsonl")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        message = str(info.value)
        assert "access denied" in message and "check the credentials in the environment" in message
        assert SECRET not in message
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_uri_with_credentials_is_refused_at_validate(tmp_path):
    spec = remote_spec(tmp_path, eval=f"s3://AKIA:{SECRET}@{BUCKET}/toy/eval.jsonl")
    proc = cli("validate", str(spec))
    assert proc.returncode != 0
    assert "data.eval" in proc.stderr and "credentials or a query string in a URI are refused" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
