"""TensorBoard holds the same scalars as metrics.jsonl (loss terms, loss weights, gradient norms
by loss, validation curves), read back from the event files, and names each run by spec, job
and a short key under `<store>/tensorboard/`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from compiler.planning.params import TrainParams
from runtime.jobs import train as trainjob
from runtime.store import Store
from runtime.train.metrics import TB_GROUPS, run_dir
from tests.runtime.conftest import toy_params
from tests.runtime.helpers import Ctx
from tests.runtime.train_fixtures import kd_inputs

STEPS, EVERY = 8, 4
SPEC, JOB = "toy-worker", "train"
KEY = "0123456789abcdef" * 4  # a 64-character job key


def params() -> TrainParams:
    p = toy_params("train")
    tr = p["training"] | {"total_steps": STEPS, "micro_batch": 4, "global_batch": 4, "checkpoint_every": EVERY,
                          "curriculum": [{"until_step": STEPS, "seq_len": 32}],
                          "lr_schedule": {"warmup_steps": 2, "decay": "cosine", "min_lr": 1e-4}}
    return TrainParams.model_validate({"training": tr, "start_step": 0, "end_step": STEPS}, strict=False)


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    """One tiny train job run as the executor runs it: work folder in a store, provenance with the key."""
    root = tmp_path_factory.mktemp("tb")
    store = Store(root / "store")
    inputs = kd_inputs(toy_data.data, root / "targets", params().training.architecture)
    ctx = Ctx(work_dir=store.work_dir(SPEC, JOB),
              provenance={"spec": {"name": SPEC}, "job": {"id": JOB, "kind": "train", "key": KEY}, "upstream": {}})
    ctx.job_id = JOB
    (root / "out").mkdir()
    trainjob.run(params(), inputs, root / "out", ctx)
    rows = [json.loads(line) for line in (root / "out" / "metrics.jsonl").read_text().splitlines()]
    return store, root / "out", rows


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _expected(rows: list[dict]) -> dict[str, dict[int, float]]:
    """Every number of metrics.jsonl as TensorBoard should have it: tag -> {step: value}."""
    want: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                want.setdefault(key, {})[row["step"]] = value
            elif isinstance(value, dict):
                assert key in TB_GROUPS, f"metrics.jsonl group {key!r} would not reach TensorBoard"
                for sub, v in value.items():
                    want.setdefault(f"{key}/{sub}", {})[row["step"]] = v
    return want


def test_event_files_hold_every_scalar_of_metrics_jsonl(trained):
    store, out, rows = trained
    want = _expected(rows)
    assert {"weight/kl", "weight/early_tool", "val/kl", "val/token_accuracy", "loss/total", "lr"} <= set(want)
    for folder in (run_dir(store.work_dir(SPEC, JOB), {"spec": {"name": SPEC}, "job": {"key": KEY}}, JOB), out / "tensorboard"):
        have = _scalars(folder)
        assert set(have) == set(want)
        for tag, points in want.items():
            assert set(have[tag]) == set(points), tag
            for step, value in points.items():
                assert have[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-6), (tag, step)


def test_validation_curves_at_every_checkpoint_and_the_end(trained):
    _, out, rows = trained
    assert [r["step"] for r in rows if "val" in r] == [EVERY - 1, STEPS - 1]  # after steps 4 and 8
    report = json.loads((out / "report.json").read_text())
    last = rows[-1]["val"]
    assert set(last) == {k.removeprefix("val_") for k in report if k.startswith("val_") and k != "val_rows"}
    # the curve's last point is the validation the report gives (measured once, at end_step)
    assert last["token_accuracy"] == pytest.approx(report["val_token_accuracy"], abs=1e-6)
    assert last["kl"] == pytest.approx(report["val_kl"], rel=1e-4)
    # weights follow their schedules in the event files too: the early_tool ramp starts at 0
    weights = _scalars(out / "tensorboard")["weight/early_tool"]
    assert weights[0] == 0.0 and weights[STEPS - 1] > 0


def test_runs_are_named_by_spec_job_and_short_key(trained):
    store, _, _ = trained
    mux = EventMultiplexer().AddRunsFromDirectory(str(store.root / "tensorboard"))
    assert list(mux.Runs()) == [f"{SPEC}/{JOB}/{KEY[:12]}"]
    assert not (store.work_dir(SPEC, JOB) / "tensorboard").exists()


def test_run_folder_outside_a_store_stays_in_the_work_folder(tmp_path):
    assert run_dir(tmp_path / "w", {"job": {"key": KEY}}, "train") == tmp_path / "w" / "tensorboard" / "spec" / "train" / KEY[:12]
    store = Store(tmp_path / "s")
    assert run_dir(store.work_dir("toy-worker", "qat"), {"spec": {"name": "toy-worker"}, "job": {"key": KEY}}, "qat") == \
        store.root / "tensorboard" / "toy-worker" / "qat" / KEY[:12]
