"""Session fixtures: the toy tokenizer and dataset, built once by the real jobs; the tiny spec run
through eval and convert once for every xdist worker of the session (`tiny_run`)."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from compiler.planning.params import DatasetParams, TokenizerParams
from runtime.jobs import dataset as dsjob
from runtime.jobs import tokenizer as tokjob
from tests.runtime.helpers import Ctx
from tests.runtime.toy_exports import shared_dir as _shared_dir

ROOT = Path(__file__).resolve().parents[2]
TOY_PLAN = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())


def toy_params(job_id: str) -> dict:
    return next(j for j in TOY_PLAN["jobs"] if j["id"] == job_id)["params"]


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> SimpleNamespace:
    tok_out = tmp_path_factory.mktemp("toy-tokenizer")
    tokjob.run(TokenizerParams.model_validate(toy_params("tokenizer"), strict=False), {}, tok_out, Ctx())
    ds_out = tmp_path_factory.mktemp("toy-dataset")
    dsjob.run(DatasetParams.model_validate(toy_params("dataset"), strict=False),
              {"tokenizer": {"tokenizer": tok_out / "tokenizer", "report": tok_out / "report.json"}}, ds_out, Ctx())
    return SimpleNamespace(tokenizer=tok_out / "tokenizer", data=ds_out / "data")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """The tiny spec (test_pipeline_resume.tiny_spec) run `--until eval --until convert` once per
    session, shared by the xdist workers: spec, store, and `jobs` (the first run's JSON rows).
    Read it as it is; `copy(dest)` gives a private copy (spec folder and store) to change."""
    from tests.runtime.test_pipeline_resume import cli, tiny_spec

    root = _shared_dir(tmp_path_factory) / "tiny-run"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done.json").exists():
            spec = tiny_spec(root / "spec")
            out = cli("run", str(spec), "--until", "eval", "--until", "convert", "--allow-stale", "--json",
                      workdir=root / "store").stdout
            (root / "done.json").write_text(out)

    def copy(dest: Path) -> SimpleNamespace:
        shutil.copytree(root / "spec", dest / "spec")
        shutil.copytree(root / "store", dest / "store", symlinks=True)
        return SimpleNamespace(spec=dest / "spec" / "tiny.yaml", store=dest / "store")

    return SimpleNamespace(spec=root / "spec" / "tiny.yaml", store=root / "store",
                           jobs=json.loads((root / "done.json").read_text())["jobs"], copy=copy)
