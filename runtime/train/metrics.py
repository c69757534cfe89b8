"""Training logs (JSONL and TensorBoard event files) and the per-loss gradient-balance alert."""

from __future__ import annotations

import json
import queue
import statistics
import threading
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Per-loss gradient norms cost one extra backward to the logits per term: measured every
# GRAD_NORM_EVERY steps (and at the last step), which keeps the trainer's overhead small.
GRAD_NORM_EVERY = 10
# Groups of per-step values: every scalar of metrics.jsonl goes to TensorBoard too, these as
# `<group>/<name>` (raw loss terms, loss weights on their schedules, gradient norms by loss when
# measured, validation losses and token accuracy on the steps that validate).
TB_GROUPS = ("loss", "weight", "grad_norm_by_loss", "val")
KEY_CHARS = 12  # of the job key in a run's name


def run_dir(work: Path, provenance: dict[str, Any], job_id: str) -> Path:
    """The folder of a training job's TensorBoard run: `<store>/tensorboard/<spec>/<job>/<key>`.

    `work` is the job's work folder, `<store>/work/<spec>/<job>` (Store.work_dir). The run lives
    at the store's top so that `tensorboard --logdir <store>/tensorboard` names it by spec, job
    and the first KEY_CHARS characters of the job key (the job's output folder is
    `jobs/<kind>/<64-character key>/`); it is there while the job trains and stays after it
    commits (the work folder is dropped then; the output keeps a copy in `tensorboard/`). A work
    folder outside a store (tests) keeps the run under `<work>/tensorboard/`."""
    spec = (provenance.get("spec") or {}).get("name") or "spec"
    key = ((provenance.get("job") or {}).get("key") or "no-key")[:KEY_CHARS]
    in_store = work.name == job_id and work.parent.name == spec and work.parent.parent.name == "work"
    root = work.parents[2] / "tensorboard" if in_store else work / "tensorboard"
    return root / spec / job_id / key


class MetricsLog:
    """Append-only `metrics.jsonl` plus TensorBoard scalars (the same ones: every number of a
    row, and every number of its TB_GROUPS dicts); on resume both restart at `start`.

    Rows are written by a background thread (serialising ~30 scalars per step would otherwise
    sit on the training step's critical path); `flush()` waits until everything queued is on
    disk, and the trainer calls it before every checkpoint."""

    def __init__(self, folder: Path, start: int, tensorboard: Path | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = folder / "metrics.jsonl"
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    break  # a line cut by the kill
                if row.get("step", start) < start:
                    kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        self.fh = open(self.path, "a", encoding="utf-8")
        self.tb_dir = tensorboard or folder / "tensorboard"
        self.tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=start, flush_secs=30)
        self.rows: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="metrics-writer", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            row = self.rows.get()
            try:
                if row is not None and self.error is None:
                    self._write(row)
            except BaseException as exc:  # surfaced by flush()/close() in the training thread
                self.error = exc
            finally:
                self.rows.task_done()
            if row is None:
                return

    def _write(self, row: dict[str, Any]) -> None:
        self.fh.write(json.dumps(row, sort_keys=True) + "\n")
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tb.add_scalar(key.replace(".", "/"), value, step)
            elif isinstance(value, dict) and key in TB_GROUPS:
                for sub, v in value.items():
                    self.tb.add_scalar(f"{key}/{sub}", v, step)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.put(row)

    def flush(self) -> None:
        self.rows.join()
        if self.error is not None:
            raise RuntimeError(f"writing training metrics failed: {self.error}") from self.error
        self.fh.flush()
        self.tb.flush()

    def close(self) -> None:
        self.rows.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing training metrics failed: {self.error}") from self.error
        self.fh.close()
        self.tb.close()


def grad_norms(weighted: dict[str, Tensor], logits: Tensor) -> dict[str, float]:
    """Norm of each weighted term's gradient with respect to the logits (where every term meets the model)."""
    out = {}
    for name, term in weighted.items():
        if not term.requires_grad:
            out[name] = 0.0
            continue
        (grad,) = torch.autograd.grad(term, logits, retain_graph=True, allow_unused=True)
        out[name] = 0.0 if grad is None else float(grad.float().norm())
    return out


class GradBalance:
    """Alerts when one term's mean gradient norm over the window exceeds max_ratio x the others' median."""

    def __init__(self, max_ratio: float, window: int) -> None:
        self.max_ratio = max_ratio
        self.window = window
        self.history: dict[str, deque[tuple[int, float]]] = {}
        self.alerts: list[dict[str, Any]] = []

    def add(self, step: int, norms: dict[str, float]) -> dict[str, Any] | None:
        for name, value in norms.items():
            hist = self.history.setdefault(name, deque())
            hist.append((step, value))
            while hist and hist[0][0] <= step - self.window:
                hist.popleft()
        means = {n: statistics.fmean(v for _, v in h) for n, h in self.history.items() if h}
        active = {n: m for n, m in means.items() if m > 0}
        if len(active) < 2:
            return None
        worst = max(active, key=active.get)
        others = statistics.median(m for n, m in active.items() if n != worst)
        ratio = active[worst] / others if others > 0 else float("inf")
        if ratio > self.max_ratio:
            alert = {"step": step, "loss": worst, "ratio": round(ratio, 3), "max_ratio": self.max_ratio}
            self.alerts.append(alert)
            return alert
        return None
