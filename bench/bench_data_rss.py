"""A rank's memory while it trains on 1,000,000 rows: the memory-mapped shards (runtime/data/shards.py) against
loading the split whole (what runtime/train/data.py did before).

    .venv/bin/python bench/bench_data_rss.py [--rows 1000000] [--seq-len 128] [--batches 500]

1. Writes `--rows` synthetic token rows (the dataset job's six int32 tensors, `--seq-len` wide, random
   lengths) as shards with `ShardWriter`, a shard at a time (the writer's memory is one shard).
2. In a fresh process per mode, opens the split and builds `--batches` micro-batches of 16 random rows
   with the trainer's `make_batch`, sampling the process's anonymous resident memory (`RssAnon`: the
   heap, tensors) and its file-backed resident pages (`RssFile`: mapped shard pages, reclaimable by
   the kernel) after opening and every 100 batches.
   - mapped: `load_split` as the trainer does now; also run at a tenth of the rows, to show that the
     anonymous memory does not depend on the number of rows.
   - whole: every tensor of every shard read into memory and widened to int64, as the previous
     loader did (`load_file` + `.long()`).
Writes bench/results/data_rss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ("input_ids", "attention_mask", "loss_mask", "tool_name_mask", "json_args_mask", "integration_mask")


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def write(folder: Path, rows: int, seq_len: int) -> float:
    import numpy as np

    from runtime.data.shards import SHARD_ROWS, ShardWriter

    start = time.perf_counter()
    writer = ShardWriter(folder, "train", {"modelspec": "{}"})
    rng = np.random.default_rng(0)
    for first in range(0, rows, SHARD_ROWS):
        n = min(SHARD_ROWS, rows - first)
        lengths = rng.integers(8, seq_len + 1, size=n)
        live = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
        arrays = {name: live for name in TOKENS}
        arrays["input_ids"] = (rng.integers(5, 32000, size=(n, seq_len)) * live).astype(np.int32)
        writer.add(arrays, lengths)
    writer.close()
    return time.perf_counter() - start


def child(folder: str, mode: str, batches: int, seq_len: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from runtime.data.shards import RowSource
    from runtime.train.data import Split, load_split, make_batch

    base = _status()
    start = time.perf_counter()
    if mode == "mapped":
        split = load_split(Path(folder), None, "train")
    else:
        src = RowSource(Path(folder), "train")
        tensors = {name: src.read_all(name).long() for name in TOKENS}
        tensors |= {"topk_ids": torch.zeros((src.rows, seq_len, 0), dtype=torch.long),
                    "topk_logits": torch.zeros((src.rows, seq_len, 0))}
        split = Split(tensors)
    opened = time.perf_counter() - start
    samples = [{"batches": 0, **{k: v - base.get(k, 0) if k in ("RssAnon",) else v for k, v in _status().items()}}]
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for b in range(1, batches + 1):
        rows = [int(r) for r in rng.integers(0, split.rows, size=16)]
        make_batch(split, rows, seq_len, torch.device("cpu"))
        if b % 100 == 0:
            samples.append({"batches": b, **{k: v - base.get(k, 0) if k in ("RssAnon",) else v
                                             for k, v in _status().items()}})
    per_batch = (time.perf_counter() - start) / batches
    return {"mode": mode, "rows": split.rows, "open_s": round(opened, 2), "batch_ms": round(per_batch * 1000, 3),
            "baseline_anon_mib": round(base["RssAnon"] / 2**20, 1),
            "samples_mib": [{k: (round(v / 2**20, 1) if k != "batches" else v) for k, v in s.items()} for s in samples],
            "anon_growth_mib": round((samples[-1]["RssAnon"] - samples[0]["RssAnon"]) / 2**20, 1),
            "anon_after_open_mib": round(samples[0]["RssAnon"] / 2**20, 1),
            "peak_rss_mib": round(_status()["VmHWM"] / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batches", type=int, default=500)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.batches, a.seq_len)))
        return
    sys.path.insert(0, str(ROOT))
    result: dict = {"benchmark": "anonymous memory of a process building micro-batches of 16 rows from a split",
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "seq_len": a.seq_len, "batches": a.batches}
    with tempfile.TemporaryDirectory() as tmp:
        for rows, modes in ((a.rows // 10, ("mapped",)), (a.rows, ("mapped", "whole"))):
            folder = Path(tmp) / f"rows{rows}"
            seconds = write(folder, rows, a.seq_len)
            size = sum(p.stat().st_size for p in folder.iterdir())
            entry = {"write_s": round(seconds, 1), "bytes_on_disk": size, "shards": len(list(folder.glob("*.safetensors")))}
            for mode in modes:
                proc = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, "--batches", str(a.batches),
                                       "--seq-len", str(a.seq_len)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-3000:])
                entry[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{rows} rows, {mode}: {json.dumps(entry[mode])}", flush=True)
            result[f"rows_{rows}"] = entry
    out = ROOT / "bench" / "results" / "data_rss.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
