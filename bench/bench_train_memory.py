"""Peak memory of one real training step of a ~125M-parameter student at 2048 tokens on CPU, with each
`training.compute` feature on and off, against the compiler's estimate for the same settings.

    .venv/bin/python bench/bench_train_memory.py            # every setting below, one fresh process each
    .venv/bin/python bench/bench_train_memory.py --only NAME

What runs: the train job's own optimizer step (`runtime.train.loop.Trainer.step`: the chunked loss
head with the toy spec's eight loss terms against random top-16 teacher targets, autocast, per-layer
checkpointing, backward, clip, AdamW) on bench_kd_step's 124,668,672-parameter student (vocab 32000,
d_model 768, 12 layers, 12 heads / 4 KV heads, SwiGLU 2048, untied), micro_batch 1, seq_len 2048.

Measured, in a fresh process per setting: the resident set before the model is built (torch
imported, the synthetic split made) and its high-water mark (`VmHWM`) after one full step (the
first step allocates AdamW's state, so model state, activations and the transient peak of the
backward all fall inside it). Peak = high-water mark - baseline. Estimate =
`rank_memory(..., "none", world 1, micro_batch 1, seq_len 2048, kernels).total`: model state +
what autograd keeps + the transient peak. The ratio measured / estimate is the number to hold: the
estimate leaves out allocator slack, gradient buffers in flight and the backward's own
temporaries. Writes bench/results/train_memory_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 2048

SETTINGS = {  # name -> training.compute
    "before (fp32, eager, keep, whole logits)": {"precision": "fp32", "attention": "eager", "activation_checkpointing": False, "loss_chunk": 0},
    "sdpa": {"precision": "fp32", "attention": "sdpa", "activation_checkpointing": False, "loss_chunk": 0},
    "sdpa + chunked loss (the CPU default)": {"precision": "fp32", "attention": "sdpa", "activation_checkpointing": False, "loss_chunk": 1024},
    "sdpa + chunked loss + recompute": {"precision": "fp32", "attention": "sdpa", "activation_checkpointing": True, "loss_chunk": 1024},
    "bf16 + sdpa + chunked loss": {"precision": "bf16", "attention": "sdpa", "activation_checkpointing": False, "loss_chunk": 1024},
    "bf16 + sdpa + chunked loss + recompute (the GPU default)": {"precision": "bf16", "attention": "sdpa", "activation_checkpointing": True, "loss_chunk": 1024},
    "eager + recompute, whole logits": {"precision": "fp32", "attention": "eager", "activation_checkpointing": True, "loss_chunk": 0},
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(name: str) -> dict:
    """One setting, in this (fresh) process."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    from bench_kd_step import ARCH_100M, TOP_K, synthetic_split, train_params
    from compiler.analysis.estimates import Dims, Kernels, rank_memory
    from runtime.distributed.world import join
    from runtime.model.student import Student
    from runtime.train.loop import Trainer, make_optimizer

    compute = SETTINGS[name]
    arch = ARCH_100M
    tp = train_params(arch, SEQ_LEN, 1, 1, compute)
    split = synthetic_split(arch["vocab_size"], 4, SEQ_LEN)
    world = join({"device": "cpu", "strategy": "none"})
    baseline = _rss_kib("VmRSS")
    model = Student(tp.architecture, seed=tp.seed).configure(compute["attention"], compute["activation_checkpointing"])
    trainer = Trainer(tp=tp, model=model, optimizer=make_optimizer(model, tp), train=split, world=world, grad_accum=1,
                      start_step=0, end_step=1)
    model.train()
    start = time.perf_counter()
    row = trainer.step(0, measure=False)
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.layers[0].parameters())
    linear = sum(m.weight.numel() for m in model.layers.modules() if isinstance(m, torch.nn.Linear))
    d = Dims(params=params, n_layers=arch["n_layers"], d_model=arch["d_model"], n_heads=arch["n_heads"],
             d_head=arch["d_head"], mlp_hidden=arch["mlp_hidden"], vocab_size=arch["vocab_size"],
             largest_unit=max(layer, params - layer * arch["n_layers"]), n_kv_heads=arch["n_kv_heads"],
             layer_linear_params=linear, head_params=arch["vocab_size"] * arch["d_model"])
    kernels = Kernels(precision=compute["precision"], attention=compute["attention"],
                      recompute=compute["activation_checkpointing"], loss_chunk=compute["loss_chunk"], top_k=TOP_K)
    est = rank_memory(d, "none", 1, 1, SEQ_LEN, kernels=kernels)
    measured = (peak - baseline) * 1024
    return {"compute": compute, "params": params, "step_s": round(seconds, 2), "loss": row["loss"]["total"],
            "measured_peak_gib": round(measured / 2**30, 3), "estimate_total_gib": round(est.total / 2**30, 3),
            "estimate_parts_gib": {k: round(getattr(est, k) / 2**30, 3) for k in
                                   ("state", "activations", "attention_scores", "logits", "cast_weights", "transient")},
            "measured_over_estimate": round(measured / est.total, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(SETTINGS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child)))
        return
    results = {}
    for name in [a.only] if a.only else SETTINGS:
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
        if proc.returncode != 0:
            raise SystemExit(f"{name}: exited {proc.returncode}\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name}: peak {r['measured_peak_gib']} GiB, estimate {r['estimate_total_gib']} GiB "
              f"(x{r['measured_over_estimate']}), step {r['step_s']} s", flush=True)
    out = {"benchmark": "peak RSS of one training step (Trainer.step), 124.7M-parameter student, micro_batch 1, "
                        f"seq_len {SEQ_LEN}, CPU, one fresh process per training.compute setting",
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "results": results}
    path = ROOT / "bench" / "results" / "train_memory_cpu.json"
    if not a.only:
        path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
