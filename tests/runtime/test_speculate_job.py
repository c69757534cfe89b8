"""The speculate job on the session's tiny run: its student drafts for its teacher (a real
transformers Llama saved by the teacher job), on the real eval split."""

from __future__ import annotations

import json
from pathlib import Path

from compiler.planning.params import EvalParams, SpeculateParams
from runtime.jobs import speculate
from runtime.store import Store
from tests.runtime.helpers import Ctx
from tests.runtime.test_pipeline_resume import NAME


def outputs(store: Path, job: str) -> dict[str, Path]:
    entry = Store(store).index(NAME)[job]
    record = json.loads((store / "jobs" / job / entry["key"] / "_complete.json").read_text())
    return {name: store / "jobs" / job / entry["key"] / o["path"] for name, o in record["outputs"].items()}


def test_the_tiny_student_drafts_for_its_teacher(tiny_run, tmp_path):
    from compiler.output.build import compile_one

    compiled = compile_one(str(tiny_run.spec), [])
    ev = EvalParams.model_validate(compiled.job("eval").job.params.model_dump(mode="json"))
    params = SpeculateParams(architecture=ev.architecture, k=3, max_new_tokens=12, prompts=6,
                             max_total_tokens=ev.max_total_tokens, special_tokens=ev.special_tokens)
    inputs = {"qat": outputs(tiny_run.store, "qat"), "teacher": outputs(tiny_run.store, "teacher"),
              "dataset": outputs(tiny_run.store, "dataset")}
    metrics = speculate.run(params, inputs, tmp_path, Ctx(provenance={"job": {"id": "speculate"}}))
    report = json.loads((tmp_path / "report.json").read_text())
    m = report["metrics"]
    assert m["worker_mismatches"] == {"value": 0, "n": 6}, report["mismatches"]
    assert 0.0 <= m["acceptance_rate"]["value"] <= 1.0 and m["acceptance_rate"]["n"] > 0
    assert 1.0 <= m["tokens_per_step"]["value"] <= 4.0 and report["k"] == 3 and report["drafter"] == "qat"
    assert metrics["acceptance_rate"] == m["acceptance_rate"]["value"]


def test_every_job_kind_has_params_and_a_runner():
    """A kind the planner emits is one the worker can validate and run (`speculate` was missed once)."""
    from compiler.planning.jobs import KINDS, READS, WHY
    from compiler.planning.params import BY_KIND
    from runtime.jobs import IMPLEMENTED

    assert set(KINDS) == set(BY_KIND) == set(IMPLEMENTED) == set(READS) == set(WHY)
