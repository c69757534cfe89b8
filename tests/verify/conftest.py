"""Session fixture: a real toy package (QAT-like random checkpoint -> export -> convert), built once
per session, across pytest-xdist workers too, with the torch functions it was exported from."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.runtime.toy_exports import toy, toy_build


@pytest.fixture(scope="session")
def toy_package(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """package: the converted .mlpackage; checkpoint: the student it came from; functions: name ->
    (FunctionP, decode_cache) as the export jobs wrapped it. Layout under the shared root (other
    tests rely on it): checkpoint/, tokenizer/ (a stand-in), export-*/, convert/<name>.mlpackage."""
    root = toy_build(tmp_path_factory)
    compiled = toy()
    functions = {}
    for job_id in compiled.job("convert").job.needs:
        if job_id.startswith("export-"):
            params = compiled.job(job_id).job.params
            functions[params.function.name] = (params.function, params.decode_cache)
    package = root / json.loads((root / "done.json").read_text())["package"]
    return SimpleNamespace(package=package, checkpoint=root / "checkpoint", functions=functions)
