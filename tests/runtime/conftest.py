"""Session fixtures: the toy tokenizer and dataset, built once by the real jobs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from compiler.planning.params import DatasetParams, TokenizerParams
from runtime.jobs import dataset as dsjob
from runtime.jobs import tokenizer as tokjob
from tests.runtime.helpers import Ctx

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
