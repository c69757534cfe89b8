"""The train and qat jobs on the real toy dataset: outputs, resume equality, checkpoint refusal, QAT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compiler.planning.params import QatParams, TrainParams
from runtime.jobs import qat as qatjob
from runtime.jobs import train as trainjob
from runtime.model.checkpoint import load_student, read_record
from runtime.model.fakequant import quantize_dequantize
from runtime.train.checkpoints import CheckpointMismatch
from tests.runtime.conftest import toy_params
from tests.runtime.helpers import Ctx
from tests.runtime.train_fixtures import Killed, kd_inputs

STEPS = 12


def params(**training) -> TrainParams:
    p = toy_params("train")
    tr = p["training"] | {"total_steps": STEPS, "micro_batch": 4, "global_batch": 4, "checkpoint_every": 4,
                          "curriculum": [{"until_step": 6, "seq_len": 32}, {"until_step": STEPS, "seq_len": 64}],
                          "lr_schedule": {"warmup_steps": 2, "decay": "cosine", "min_lr": 1e-4}} | training
    return TrainParams.model_validate({"training": tr, "start_step": 0, "end_step": STEPS}, strict=False)


@pytest.fixture(scope="module")
def inputs(toy_data, tmp_path_factory):
    return kd_inputs(toy_data.data, tmp_path_factory.mktemp("targets"), params().training.architecture)


def run_train(p, inputs, root: Path, key="key-1", kill_after: int | None = None, force=False) -> dict:
    (root / "out").mkdir(parents=True, exist_ok=True)
    (root / "work").mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work_dir=root / "work", provenance={"job": {"key": key, "fingerprint": key}, "upstream": {}}, force=force)
    if kill_after is not None:
        seen = []

        def emit(event):
            if event[0] == "advance":
                seen.append(event)
                if len(seen) >= kill_after:
                    raise Killed()
        ctx.emit = emit
    return trainjob.run(p, inputs, root / "out", ctx)


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    metrics = run_train(params(), inputs, root)
    return root, metrics


def test_outputs_metrics_and_report(uninterrupted):
    root, metrics = uninterrupted
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.jsonl", "report.json", "tensorboard"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS))
    assert set(rows[0]["loss"]) == {"kl", "ce_teacher", "ce_ground_truth", "tool_name", "json_args", "integration",
                                    "length_kd", "early_tool", "total"}
    assert [r["seq_len"] for r in rows][:6] == [32] * 6 and rows[-1]["seq_len"] <= 64
    assert rows[0]["weight"]["early_tool"] == 0.0 and rows[5]["weight"]["early_tool"] > 0  # the ramp
    assert rows[1]["lr"] > rows[0]["lr"] and rows[-1]["lr"] < rows[2]["lr"]  # warmup, then decay
    assert "grad_norm_by_loss" in rows[0] and "grad_norm_by_loss" in rows[-1]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    first, later = (sum(r["loss"]["kl"] for r in rows[a:a + 3]) for a in (0, 3))
    assert later < first  # learning (same curriculum stage, same weights)
    report = json.loads((out / "report.json").read_text())
    assert report["steps_run"] == STEPS and report["resumed_from"] is None and "val_token_accuracy" in report
    assert read_record(out / "checkpoint")["quantized"] is False
    assert metrics["steps_run"] == STEPS


def test_killed_run_resumes_to_the_same_weights(inputs, uninterrupted, tmp_path):
    with pytest.raises(Killed):
        run_train(params(), inputs, tmp_path, kill_after=7)  # checkpoint at step 4 exists, step 8 does not
    assert sorted(p.name for p in (tmp_path / "work").glob("ckpt-*")) == ["ckpt-00000004"]
    metrics = run_train(params(), inputs, tmp_path)
    assert metrics["steps_run"] == STEPS - 4
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["resumed_from"] == 4
    full = load_file(str(uninterrupted[0] / "out" / "checkpoint" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "out" / "checkpoint" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS))


def test_a_checkpoint_from_another_fingerprint_is_refused_unless_forced(inputs, tmp_path):
    with pytest.raises(Killed):
        run_train(params(), inputs, tmp_path, kill_after=5)
    changed = params(optimizer=params().training.optimizer | {"lr": 1e-3})
    with pytest.raises(CheckpointMismatch) as err:
        run_train(changed, inputs, tmp_path, key="key-2")
    message = str(err.value)
    assert "training.optimizer.lr: 0.003 -> 0.001" in message and "--force test" in message
    metrics = run_train(changed, inputs, tmp_path, key="key-2", force=True)
    assert metrics["steps_run"] == STEPS


def test_qat_fake_quantizes_per_plan_and_bakes_the_weights(inputs, uninterrupted, tmp_path):
    plan = toy_params("qat")
    q = QatParams.model_validate(plan | {"training": params().training.model_dump(), "start_step": STEPS - 4,
                                         "end_step": STEPS}, strict=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "work").mkdir()
    ctx = Ctx(work_dir=tmp_path / "work", provenance={"job": {"key": "q"}})
    qat_inputs = inputs | {"train": {"checkpoint": uninterrupted[0] / "out" / "checkpoint"}}
    metrics = qatjob.run(q, qat_inputs, tmp_path / "out", ctx)
    assert metrics["steps_run"] == 4
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["fake_quantized_modules"] == sum(1 for m in q.quantization if m.dtype != "none")
    assert read_record(tmp_path / "out" / "checkpoint")["quantized"] is True
    model = load_student(tmp_path / "out" / "checkpoint", q.training.architecture)
    weights = dict(model.named_parameters())
    for m in q.quantization:
        w = weights[f"{m.module}.weight"].detach()
        if m.dtype == "none":
            continue
        assert torch.allclose(quantize_dequantize(w, m), w, atol=1e-6), f"{m.module} is not on its quantization grid"
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS - 4, STEPS)) and {r["stage"] for r in rows} == {"qat"}
    # lr_scale applies on top of the global schedule
    full = json.loads((uninterrupted[0] / "out" / "metrics.jsonl").read_text().splitlines()[STEPS - 4])
    assert rows[0]["lr"] == pytest.approx(full["lr"] * q.lr_scale)
