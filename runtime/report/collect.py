"""What the run report shows, read from the store for one spec's plan; nothing here imports torch.

Jobs are found as `modelspec status` finds them (runtime.keys: the plan's cache keys, the
completion records in the store), without re-hashing their outputs: the report is a view, and
re-hashing a 9B model's checkpoints would take minutes (`modelspec status` checks them). A job whose current key has no record but which completed
under an earlier key (the spec changed since) is shown from that earlier record, marked stale.
Anything missing (a job not run, a report unreadable) becomes a "not run" note, never an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.keys import job_keys, job_states
from runtime.plan import Plan
from runtime.store import Store



@dataclass
class JobView:
    id: str
    kind: str
    state: str  # up_to_date | stale | missing
    reasons: list[str]
    record: dict[str, Any] | None = None
    folder: Path | None = None
    earlier: bool = False  # shown from a completion record of an earlier key

    @property
    def ran(self) -> bool:
        return self.record is not None

    def output(self, name: str) -> Path | None:
        if self.record is None or self.folder is None:
            return None
        meta = (self.record.get("outputs") or {}).get(name)
        if not isinstance(meta, dict):
            return None
        rel = Path(str(meta.get("path", "")))
        if not rel.parts or rel.is_absolute() or ".." in rel.parts:
            return None
        return self.folder / rel

    def report(self) -> dict[str, Any] | None:
        return read_json(self.output("report"))

    @property
    def status(self) -> str:
        if self.record is None:
            return "not run"
        return "stale (from an earlier run)" if self.earlier or self.state != "up_to_date" else "done"


@dataclass
class RunData:
    plan: Plan
    store: Path
    spec: str
    jobs: dict[str, JobView]
    contracts: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[JobView]:
        return [j for j in self.jobs.values() if j.kind == kind]


def read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load(plan: Plan, contracts: dict[str, str], store: Store, spec: str) -> RunData:
    keys = job_keys(plan)
    index = store.index(plan.name)
    views: dict[str, JobView] = {}
    for st in job_states(plan, store, keys, verify=False):  # a view: outputs are not re-hashed (status does that)
        k = keys[st.id]
        view = JobView(st.id, st.kind, st.state, st.reasons)
        record = store.record(k.kind, k.key)
        if record is not None and st.state == "up_to_date":
            view.record, view.folder = record, store.job_dir(k.kind, k.key)
        else:
            prev = (index.get(st.id) or {}).get("key")
            if isinstance(prev, str) and re.fullmatch(r"[0-9a-f]{64}", prev):
                old = store.record(k.kind, prev)
                if old is not None:
                    view.record, view.folder, view.earlier = old, store.job_dir(k.kind, prev), prev != k.key
        views[st.id] = view
    parsed = {}
    for name, text in contracts.items():
        try:
            parsed[name] = json.loads(text)
        except ValueError:
            continue
    return RunData(plan, store.root, spec, views, parsed)


# -- training --------------------------------------------------------------------------------
def metric_rows(path: Path | None) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a cut last line (a killed run) ends the list."""
    rows: list[dict[str, Any]] = []
    if path is None:
        return rows
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def training_series(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{"loss": {term: points}, "lr": {"lr": points}, "grad_norm_by_loss": {term: points}, "val": {name: points}}
    over the global step ("val": the validation losses and token accuracy of the steps that validate, when logged)."""
    loss: dict[str, list[tuple[float, float]]] = {}
    lr: dict[str, list[tuple[float, float]]] = {}
    grads: dict[str, list[tuple[float, float]]] = {}
    val: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        step = float(row["step"])
        terms = row.get("loss") if isinstance(row.get("loss"), dict) else None
        if terms is not None:  # {"loss": {term: value, ...}}
            for name, v in terms.items():
                if _num(v) is not None:
                    loss.setdefault(str(name), []).append((step, _num(v)))
        else:
            if _num(row.get("loss")) is not None:
                loss.setdefault("total", []).append((step, _num(row["loss"])))
            for name, v in row.items():  # flat rows: loss/<term> or loss.<term>
                m = re.fullmatch(r"loss[./](.+)", str(name))
                if m and _num(v) is not None:
                    loss.setdefault(m.group(1), []).append((step, _num(v)))
        if _num(row.get("lr")) is not None:
            lr.setdefault("lr", []).append((step, _num(row["lr"])))
        for group, into in (("grad_norm_by_loss", grads), ("val", val)):
            values = row.get(group)
            if isinstance(values, dict):
                for name, v in values.items():
                    if _num(v) is not None and name != "rows":
                        into.setdefault(str(name), []).append((step, _num(v)))
    return {"loss": loss, "lr": lr, "grad_norm_by_loss": grads, "val": val}


# -- package size ----------------------------------------------------------------------------
def module_group(name: str) -> str:
    """`layers.3.self_attn.q_proj` -> `layers.*.self_attn.q_proj`: per-layer modules summed over layers."""
    return re.sub(r"^layers\.\d+\.", "layers.*.", name)


def size_by_module(quantization: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Bytes under the recipe per module group, largest first: group, layers, bytes, dtype(s), granularity."""
    modules = (quantization or {}).get("modules") or {}
    groups: dict[str, dict[str, Any]] = {}
    for name, m in modules.items():
        if not isinstance(m, dict) or _num(m.get("bytes")) is None:
            continue
        g = groups.setdefault(module_group(str(name)), {"group": module_group(str(name)), "count": 0, "bytes": 0.0,
                                                        "dtypes": set(), "granularity": set()})
        g["count"] += 1
        g["bytes"] += float(m["bytes"])
        g["dtypes"].add(str(m.get("dtype")))
        if m.get("granularity"):
            g["granularity"].add(str(m["granularity"]) + (f"/{m['block_size']}" if m.get("block_size") else ""))
    out = []
    for g in sorted(groups.values(), key=lambda g: (-g["bytes"], g["group"])):
        out.append({**g, "dtypes": ", ".join(sorted(g["dtypes"])), "granularity": ", ".join(sorted(g["granularity"]))})
    return out
