"""The eval job for a judge: one prefill per eval row, its verdict read at the last token, and the verdict metrics.

Called by `runtime/jobs/eval.py` when the spec has a `judge` section. Inputs are the eval job's (the student
checkpoint, the dataset's `eval` rows with their `judge` vectors, runtime/data/judge.py). Each row runs through
`Student.judge_outputs` (the same eager path the export wrapper traces) in batches of rows of the same length
(no padding, so nothing depends on the batch), and the head's outputs at the verdict position give the score s
(log-odds that A beats B) and one logit per clause. Metrics (docs/metrics.md, `{"value", "n"}`):

- pairwise_accuracy: pair rows (each pair in both orders) whose verdict (s > 0: A) picks the chosen response;
- position_bias_rate: pairs whose verdict picks the same position in both orders (so it prefers a different
  response once the two are swapped);
- clause_f1_micro / clause_f1_min: F1 of the clause flags (logit > 0) against the labels over clause rows,
  pooled over clauses / the lowest per-clause F1 (each clause's F1, precision and recall are in the report);
- verdict_json_validity: rows whose verdict JSON (`verdict_json`) serializes without NaN or infinity and is
  valid against `VERDICT_SCHEMA` (jsonschema), the schema the release's runtime config publishes.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from runtime.data import judge as J
from runtime.data.judge import VERDICT_SCHEMA
from runtime.data.shards import RowSource
from runtime.model.checkpoint import load_student, read_record

from .eval_batches import length_batches
from .tokenizer import write_report

def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def verdict_json(outputs: list[float], clauses: list[str], pairwise: bool) -> str:
    """The verdict an app builds from the head's outputs at the last token (raises ValueError on NaN/inf)."""
    probs = {c: _sigmoid(v) if math.isfinite(v) else v for c, v in zip(clauses, outputs[1:])}
    verdict: dict[str, Any] = {"clauses": probs, "violated": [c for c, v in zip(clauses, outputs[1:]) if v > 0]}
    if pairwise:
        s = outputs[0]
        verdict |= {"preferred": "A" if s > 0 else "B", "p_a_better": _sigmoid(s) if math.isfinite(s) else s}
    return json.dumps(verdict, allow_nan=False, sort_keys=True)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _outputs(model, source: RowSource, device: torch.device, budget_mb: int) -> list[list[float]]:
    """The verdict head's outputs at each row's verdict position, rows batched by equal length within the budget."""
    vectors = source.read_all("judge")
    out: list[list[float]] = [[] for _ in range(source.rows)]
    with torch.no_grad():
        for n, part in length_batches(source, model.arch, budget_mb):
            h = model.final_states(source.take("input_ids", part, n).long().to(device))
            pos = vectors[part, 0].long().to(device)
            picked = model.judge_head(h[torch.arange(len(part), device=device), pos]).float().cpu()
            for r, values in zip(part, picked.tolist()):
                out[r] = values
    return out


def score(meta: list[dict], vectors: list[list[float]], outputs: list[list[float]],
          clauses: list[str]) -> tuple[dict, dict, dict, list[dict]]:
    """(metrics, per-clause figures, counts, per-row samples) from each eval row's metadata, judge vector and head
    outputs at its verdict position."""
    import jsonschema

    c = len(clauses)
    correct = pair_rows = 0
    picks: dict[str, dict[int, bool]] = defaultdict(dict)
    tp, fp, fn = [0] * c, [0] * c, [0] * c
    clause_rows = valid = 0
    samples = []
    for m, vec, o in zip(meta, vectors, outputs):
        pairwise = m["kind"] == "pairwise"
        try:
            verdict = verdict_json(o, clauses, pairwise)
            jsonschema.validate(json.loads(verdict), VERDICT_SCHEMA)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            verdict = None
        if pairwise:
            pair_rows += 1
            picks_a = o[0] > 0
            correct += int(picks_a == (vec[1] == 1.0))
            picks[m["pair"]][m["order"]] = picks_a
        else:
            clause_rows += 1
            for i in range(c):
                flag, label = o[1 + i] > 0, vec[3 + i] == 1.0
                tp[i] += flag and label
                fp[i] += flag and not label
                fn[i] += label and not flag
        samples.append({"id": m["id"], "kind": m["kind"], "order": m.get("order"), "outputs": o, "verdict": verdict})
    both = [p for p in picks.values() if len(p) == 2]
    biased = sum(1 for p in both if p[0] == p[1])
    per_clause = {name: {"f1": _f1(tp[i], fp[i], fn[i]), "precision": tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else None,
                         "recall": tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else None, "support": tp[i] + fn[i]}
                  for i, name in enumerate(clauses)}
    supported = [per_clause[n]["f1"] for i, n in enumerate(clauses) if tp[i] + fp[i] + fn[i]]
    metrics = {
        "pairwise_accuracy": {"value": correct / pair_rows if pair_rows else None, "n": pair_rows},
        "position_bias_rate": {"value": biased / len(both) if both else None, "n": len(both)},
        "clause_f1_micro": {"value": _f1(sum(tp), sum(fp), sum(fn)) if clause_rows else None, "n": clause_rows},
        "clause_f1_min": {"value": min(supported) if supported else None, "n": clause_rows},
        "verdict_json_validity": {"value": valid / len(meta) if meta else None, "n": len(meta)},
    }
    counts = {"rows": len(meta), "pair_rows": pair_rows, "pairs_in_both_orders": len(both), "clause_rows": clause_rows}
    return metrics, per_clause, counts, samples


def run(params, inputs: dict[str, dict[str, Path]], out: Path, ctx, student_job: str, ckpt: Path, budget_mb: int) -> dict:
    start = time.perf_counter()
    clauses = list(params.judge_clauses)
    data = Path(inputs["dataset"]["data"])
    source = RowSource(data, "eval", rebuild="the dataset job")
    if "judge" not in source.names:
        raise RuntimeError(f"{data}: the eval rows have no verdict vectors; rebuild the dataset job for this judge")
    meta = [json.loads(line) for line in (data / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    if len(meta) != source.rows:
        raise RuntimeError(f"{data}: eval.jsonl has {len(meta)} rows and the eval tensors {source.rows}; rebuild the "
                           "dataset job")
    device = torch.device("cuda") if ctx.resources.get("device") == "cuda" and torch.cuda.is_available() else torch.device("cpu")
    model = load_student(ckpt, arch=params.architecture).to(device=device, dtype=torch.float32).eval()
    record = read_record(ckpt)
    ctx.detail(f"eval: {source.rows} judge rows")
    outputs = _outputs(model, source, device, budget_mb)
    vectors = source.read_all("judge").tolist()

    metrics, per_clause, counts, samples = score(meta, vectors, outputs, clauses)
    seconds = round(time.perf_counter() - start, 3)
    report = {
        "metrics": metrics, "clauses": per_clause, "counts": counts,
        "protocol": {"read_at": "the last token", "layout": J.layout(clauses), "verdict_schema": VERDICT_SCHEMA,
                     "flag": "logit > 0"},
        "placement": {"device": device.type, "dtype": "float32", "memory_budget_mb": budget_mb},
        "checkpoint": {"job": student_job, "step": record["step"], "quantized": record["quantized"]},
        "role": params.role, "provenance": ctx.provenance, "seconds": seconds,
    }
    write_report(out, report)
    with open(out / "samples.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for s in samples:
            fh.write(json.dumps(s, sort_keys=True, separators=(",", ":")) + "\n")
    flat = {name: float(v["value"]) for name, v in metrics.items() if v["value"] is not None}
    flat["seconds"] = seconds
    return flat
