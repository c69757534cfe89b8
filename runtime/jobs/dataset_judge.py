"""The dataset job for a judge: preference pairs and clause rows validated, laid out, tokenized and written.

Called by `runtime/jobs/dataset.py` when the spec has a `judge` section. The row format, layout and
`judge` vector are runtime/data/judge.py's. A row is dropped for the first failing reason
(`judge.REASONS`, counted per split and per input file); a pair goes to `val` or `train` as a whole
(sha256 of its id, like every train-file sample), so both orders of a pair are always in the same
split. A rendered row longer than `max_seq_len` is rejected (`too_long`), never truncated: the
verdict is read at the last token. A judge has no `data.tool_registry` (its rows call no tools).

Outputs in `out/data`: the token rows (runtime/data/rows.py; every loss mask is 0: a judge trains
only its verdict head) plus `judge` `[rows, 3 + 2C]`, and `{split}.jsonl` row metadata (id, kind,
pair and order, or the clause labels); `out/report.json` as the worker's dataset report where it
applies (counts, drops, lengths), plus `judge` (clauses, layout, pairs and clause rows per split).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from runtime.data import judge as J
from runtime.data.chat import MASKS
from runtime.data.rows import write_rows
from runtime.hashing import tree_sha256

from .dataset_checks import VAL_FRACTION, DatasetJobError, Drops, split_of
from .tokenizer import write_report

SPLITS = ("train", "val", "eval")


def run(params, tok, files: dict[str, list[tuple[str, Any]]], resolved: dict[str, Path], out: Path, ctx) -> dict:
    clauses = list(params.judge_clauses)
    special = params.special_tokens
    bos, eos, pad = special["bos"].id, special["eos"].id, special["pad"].id
    L = params.max_seq_len
    step = ctx.progress("validate judge rows", sum(len(v) for v in files.values()))
    seen: set[str] = set()
    kept: dict[str, list[dict]] = {s: [] for s in SPLITS}
    read, too_long = Counter(), Counter()
    drops = Drops(SPLITS, list(files))
    dropped, file_dropped, examples = drops.by_split, drops.by_file, drops.examples
    for fname, rows in files.items():
        for raw, sample in rows:
            sid = sample.get("id") if isinstance(sample, dict) else None
            split = "eval" if fname == "eval" else split_of(sid if isinstance(sid, str) else raw)
            read[split] += 1
            reason = J.check_row(sample, clauses, seen)
            if reason:
                drops.add(split, fname, reason, sid, raw)
            else:
                kept[split].append(sample)
            step(1)

    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    split_reports: dict[str, dict] = {}
    for split in SPLITS:
        token_rows: list[dict[str, list[int]]] = []
        meta: list[dict] = []
        vectors: list[np.ndarray] = []
        by_kind = Counter()
        for sample in kept[split]:
            parts = J.rows_of(sample, clauses)
            encoded = [[bos] + tok(text, add_special_tokens=False)["input_ids"] + [eos] for text, _, _ in parts]
            if any(len(ids) > L for ids in encoded):  # a pair is kept or dropped whole
                too_long[split] += 1
                continue
            by_kind[sample["kind"]] += 1
            for ids, (_, info, vec) in zip(encoded, parts):
                vec = vec.copy()
                vec[0] = len(ids) - 1  # the verdict is read at the last token
                token_rows.append({"input_ids": ids, **{m: [0] * len(ids) for m in MASKS}})
                meta.append(info | {"row": len(meta), "length": len(ids)})
                vectors.append(vec)
        extra = {"judge": np.stack(vectors) if vectors else np.zeros((0, J.width(len(clauses))), dtype=np.float32)}
        write_rows(data_dir, split, token_rows, meta, L, {"split": split, "max_seq_len": L, "pad_id": pad, "bos_id": bos,
                                                          "eos_id": eos, "judge_layout": J.LAYOUT_VERSION}, extra)
        lengths = [m["length"] for m in meta]
        n_dropped = sum(dropped[split].values())
        split_reports[split] = {
            "read": read[split], "rows": len(meta), "dropped": n_dropped,
            "dropped_by_reason": dict(sorted(dropped[split].items())),
            "corruption_rate": n_dropped / read[split] if read[split] else 0.0, "too_long": too_long[split],
            "by_kind": dict(sorted(by_kind.items())), "tokens": sum(lengths), "max_length": max(lengths, default=0),
            "mean_length": sum(lengths) / len(lengths) if lengths else 0.0,
            "teacher_preferences": int(sum(1 for v in vectors if v[2] >= 0)),
            "teacher_clause_rows": int(sum(1 for v in vectors if (v[3 + len(clauses):] >= 0).any())),
        }
    if not split_reports["train"]["rows"]:
        raise DatasetJobError(f"data.train {params.train!r}: no valid judge rows "
                              f"(dropped: {dict(sum((dropped[s] for s in SPLITS), Counter()))}); the format is in "
                              "docs/roles.md#judge-data")
    file_reports = {}
    for fname, rows in files.items():
        n_dropped = sum(file_dropped[fname].values())
        file_reports[fname] = {"path": getattr(params, fname), "sha256": tree_sha256(resolved[fname]), "read": len(rows),
                               "dropped": n_dropped, "dropped_by_reason": dict(sorted(file_dropped[fname].items())),
                               "corruption_rate": n_dropped / len(rows) if rows else 0.0}
    all_dropped = sum(file_dropped.values(), Counter())
    report = {
        "role": params.role, "max_seq_len": L, "val_fraction": VAL_FRACTION,
        "special_token_ids": {name: t.id for name, t in sorted(special.items())},
        "inputs": file_reports, "splits": split_reports,
        "counts": {s: split_reports[s]["rows"] for s in SPLITS},
        "by_kind": {s: split_reports[s]["by_kind"] for s in SPLITS},
        "dropped_by_reason": dict(sorted(all_dropped.items())), "dropped_examples": dict(sorted(examples.items())),
        "corruption_rate": {f: file_reports[f]["corruption_rate"] for f in files},
        "too_long": sum(too_long.values()), "truncated": 0,
        "judge": {"clauses": clauses, "layout": J.layout(clauses)},
        "files": {p.name: p.stat().st_size for p in sorted(data_dir.iterdir())},
        "fingerprint": tree_sha256(data_dir),
    }
    write_report(out, report | {"provenance": ctx.provenance})
    ctx.detail("judge rows: " + json.dumps({s: split_reports[s]["rows"] for s in SPLITS}))
    return report
