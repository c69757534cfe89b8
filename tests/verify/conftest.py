"""Session fixture: a real toy package (QAT-like random checkpoint -> export -> convert), built once
per session, across pytest-xdist workers too, with the torch functions it was exported from."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.runtime.helpers import Ctx
from tests.runtime.toy_exports import PROVENANCE, export_all, save_checkpoint, toy


def _shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A folder every pytest-xdist worker of this session sees (the session's own one without xdist)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _convert(inputs: dict, out: Path) -> Path:
    from runtime.jobs import convert

    params = toy().job("convert").job.params
    upstream = {job: {"fingerprint": f"fp-{job}", "key": f"key-{job}"} for job in inputs}
    provenance = dict(PROVENANCE, job={"id": "convert", "kind": "convert", "fingerprint": "fp-convert", "key": "k"},
                      upstream=upstream)
    out.mkdir(parents=True, exist_ok=True)
    convert.run(params, inputs, out, Ctx(work_dir=out.parent, provenance=provenance))
    return out / f"{params.name}.mlpackage"


@pytest.fixture(scope="session")
def toy_package(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """package: the converted .mlpackage; checkpoint: the student it came from; functions: name ->
    (FunctionP, decode_cache) as the export jobs wrapped it. Layout under the shared root (other
    tests rely on it): checkpoint/, tokenizer/ (a stand-in), export-*/, convert/<name>.mlpackage."""
    root = _shared_dir(tmp_path_factory) / "toy-verify"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done.json").exists():
            checkpoint = save_checkpoint(toy(), root / "checkpoint")
            package = _convert(export_all(toy(), checkpoint, root), root / "convert")
            (root / "done.json").write_text(json.dumps({"package": str(package)}))
    compiled = toy()
    functions = {}
    for job_id in compiled.job("convert").job.needs:
        if job_id.startswith("export-"):
            params = compiled.job(job_id).job.params
            functions[params.function.name] = (params.function, params.decode_cache)
    package = Path(json.loads((root / "done.json").read_text())["package"])
    return SimpleNamespace(package=package, checkpoint=root / "checkpoint", functions=functions)
