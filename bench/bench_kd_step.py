"""Throughput and model FLOPs utilisation (MFU) of the KD training step of a ~125M-parameter student.

    .venv/bin/python bench/bench_kd_step.py --device cuda            # the measurement issue 8 asks for
    .venv/bin/python bench/bench_kd_step.py --device cpu --small     # a smoke run of the same code

What runs: the job's own optimizer step, `runtime.train.loop.Trainer.step` (batch selection and
cropping, the toy spec's loss terms -- KL on the teacher's top-k at temperature 2, CE on the
teacher and the ground truth, the tool-name / JSON-args / integration / early-tool / length
terms -- backward, gradient all-reduce bookkeeping, clip, AdamW), on a student built from the
toy spec's training parameters (generated/toy-worker/plan.json) with the architecture swapped
for a bigger one:

    default: vocab 32000, d_model 768, 12 layers, 12 heads (4 KV heads), d_head 64,
             SwiGLU hidden 2048, untied lm_head -> 124,668,672 parameters
    --small: vocab 4096, d_model 256, 4 layers, 4 heads (2 KV heads), d_head 64,
             SwiGLU hidden 704 -> about 5M parameters (a CPU smoke run)

Data: a synthetic split whose rows are all full length (so the job never crops a batch and
every step trains micro_batch x grad_accum x seq_len tokens) with random teacher top-k targets
(k = 16, the toy spec's top_k); the step's cost does not depend on their values. Checkpoints
and metric files are not written (they are not part of the step). The per-loss gradient-norm
probe runs at the job's cadence (every GRAD_NORM_EVERY steps), as in a real run.

Measured: wall time of each optimizer step after --warmup steps (torch.cuda.synchronize
before and after on cuda); tokens/s = micro_batch x grad_accum x seq_len / median step time.
Model FLOPs per token come from compiler/analysis/estimates.py, the formula docs/scale.md uses:
6 N (N all parameters, embedding included) + 12 L q s (attention's QK^T and PV, forward and
backward, over the full s x s square eager attention computes). Achieved FLOP/s = tokens/s x
FLOPs/token; MFU = achieved / the device's peak for the precision the step runs in.

Compute: the step runs under the `training.compute` settings given (`--precision fp32|bf16`,
`--attention sdpa|eager`, `--recompute`, `--loss-chunk N`; defaults bf16/sdpa/recompute/1024 on cuda,
fp32/sdpa/no recompute/1024 on cpu), exactly as the train job would (`Trainer.step`: autocast, the
chunked loss head, per-layer checkpointing). --tf32 lets fp32 matmuls use TF32 tensor cores. The
peak used for MFU follows the precision: bf16 -> the dense bf16 peak, fp32 -> the fp32 peak (TF32
with --tf32). On cuda the result also has the peak memory allocated against the compiler's
estimate for the same settings (`compiler.analysis.estimates.rank_memory`, one process).
`--arch 1b` is Llama-3.2-1B's shape (1.24B parameters, vocabulary 128256, tied) for the GPU script
(`bench/gpu_kd_step.sh`).

Writes bench/results/kd_step_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from compiler.analysis.estimates import Dims, Kernels, attention_flops_per_token, flops_per_token, rank_memory  # noqa: E402
from compiler.planning.params import TrainParams  # noqa: E402
from runtime.distributed.world import accumulation, join  # noqa: E402
from runtime.model.student import Student  # noqa: E402
from runtime.train.data import Split  # noqa: E402
from runtime.train.loop import Trainer, make_optimizer  # noqa: E402
from runtime.train.metrics import GRAD_NORM_EVERY  # noqa: E402

TOP_K = 16

ARCH_100M = {"vocab_size": 32000, "d_model": 768, "n_layers": 12, "n_heads": 12, "n_kv_heads": 4, "d_head": 64,
             "mlp_hidden": 2048, "norm_eps": 1e-6, "rope_theta": 10000.0, "max_context": 4096, "tie_embeddings": False}
ARCH_1B = {"vocab_size": 128256, "d_model": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "d_head": 64,
           "mlp_hidden": 8192, "norm_eps": 1e-5, "rope_theta": 500000.0, "max_context": 16384, "tie_embeddings": True}
ARCH_SMALL = {"vocab_size": 4096, "d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "d_head": 64,
              "mlp_hidden": 704, "norm_eps": 1e-6, "rope_theta": 10000.0, "max_context": 1024, "tie_embeddings": False}

# Dense peak TFLOP/s per precision, from the vendors' data sheets (no sparsity). Matched by
# substring of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" before "H100").
PEAKS = [
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 418.0, "bf16": 835.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0}),  # SXM
    ("H200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0}),  # SXM; same compute as H100 SXM
    ("GH200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
]


def known_peaks(device_name: str) -> dict[str, float] | None:
    for key, peaks in PEAKS:
        if key.lower() in device_name.lower():
            return peaks
    return None


def train_params(arch: dict, seq_len: int, micro_batch: int, grad_accum: int, compute: dict | None = None):
    plan = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())
    p = next(j for j in plan["jobs"] if j["id"] == "train")["params"]
    tr = p["training"] | {"architecture": arch, "micro_batch": micro_batch, "global_batch": micro_batch * grad_accum,
                          "compute": compute or p["training"]["compute"],
                          "curriculum": [{"until_step": 10**9, "seq_len": seq_len}], "checkpoint_every": 10**9,
                          "total_steps": 10**6}
    return TrainParams.model_validate({"training": tr, "start_step": 0, "end_step": 10**6}, strict=False).training


def synthetic_split(vocab: int, rows: int, seq_len: int, k: int = TOP_K) -> Split:
    """Full-length rows (no cropping), target masks like the toy data, random sorted teacher top-k."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(9, vocab, (rows, seq_len), generator=g)
    pos = torch.arange(seq_len)[None].expand(rows, -1)
    att = torch.ones(rows, seq_len, dtype=torch.long)
    loss = (pos >= min(20, seq_len // 4)).long()
    base = torch.randint(0, vocab, (rows, seq_len, 1), generator=g)
    topk_ids = (base + torch.arange(k) * (vocab // k)) % vocab  # k distinct ids per position
    topk_logits = torch.randn(rows, seq_len, k, generator=g).sort(dim=-1, descending=True).values * 3
    tensors = {"input_ids": ids, "attention_mask": att, "loss_mask": loss, "tool_name_mask": loss * (pos % 7 == 0),
               "json_args_mask": loss * (pos % 3 == 0), "integration_mask": loss * (pos % 5 == 0),
               "topk_ids": topk_ids, "topk_logits": topk_logits}
    return Split(tensors)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    i = (len(s) - 1) * q
    lo, hi = math.floor(i), math.ceil(i)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default bf16 on cuda, fp32 on cpu")
    ap.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=None,
                    help="per-layer activation checkpointing; default on for cuda, off for cpu")
    ap.add_argument("--loss-chunk", type=int, default=1024, help="positions per loss chunk (0: whole logits)")
    ap.add_argument("--arch", choices=["125m", "1b"], default="125m", help="the student's shape (--small overrides)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores for fp32 matmuls (cuda)")
    ap.add_argument("--small", action="store_true", help="a ~5M-parameter architecture for a CPU smoke run")
    ap.add_argument("--seq-len", type=int, default=None, help="default 1024 (128 with --small)")
    ap.add_argument("--micro-batch", type=int, default=None, help="default 8 (4 with --small)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=None, help="measured steps; default 30 (5 with --small)")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured steps first; default 5 (2 with --small)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU; default: known per GPU and precision")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/kd_step_<device>.json")
    a = ap.parse_args(argv)
    a.precision = a.precision or ("bf16" if a.device == "cuda" else "fp32")
    a.recompute = a.recompute if a.recompute is not None else a.device == "cuda"
    if a.tf32 and a.precision != "fp32":
        ap.error("--tf32 applies to fp32 matmuls only")
    if a.tf32 and a.device != "cuda":
        ap.error("--tf32 applies to cuda only")
    a.seq_len = a.seq_len or (128 if a.small else 1024)
    a.micro_batch = a.micro_batch or (4 if a.small else 8)
    a.steps = a.steps if a.steps is not None else (5 if a.small else 30)
    a.warmup = a.warmup if a.warmup is not None else (2 if a.small else 5)
    if a.steps < 1 or a.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    if a.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible (torch.cuda.is_available() is False)")
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    arch = ARCH_SMALL if a.small else ARCH_1B if a.arch == "1b" else ARCH_100M
    compute = {"precision": a.precision, "attention": a.attention, "activation_checkpointing": a.recompute,
               "loss_chunk": a.loss_chunk}
    tp = train_params(arch, a.seq_len, a.micro_batch, a.grad_accum, compute)
    if a.seq_len > tp.architecture.max_context:
        raise SystemExit(f"--seq-len {a.seq_len} exceeds the architecture's max_context {tp.architecture.max_context}")
    world = join({"device": a.device, "strategy": "none"})  # one process
    model = Student(tp.architecture, seed=tp.seed, device=world.device).configure(a.attention, a.recompute)
    params = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.layers[0].parameters())
    root = params - layer * len(model.layers)
    linear = sum(m.weight.numel() for m in model.layers.modules() if isinstance(m, torch.nn.Linear))
    d = Dims(params=params, n_layers=arch["n_layers"], d_model=arch["d_model"], n_heads=arch["n_heads"],
             d_head=arch["d_head"], mlp_hidden=arch["mlp_hidden"], vocab_size=arch["vocab_size"],
             largest_unit=max(layer, root), n_kv_heads=arch["n_kv_heads"], layer_linear_params=linear,
             head_params=arch["vocab_size"] * arch["d_model"])
    kernels = Kernels(precision=a.precision, attention=a.attention, recompute=a.recompute, loss_chunk=a.loss_chunk,
                      top_k=TOP_K)
    estimate = rank_memory(d, "none", 1, a.micro_batch, a.seq_len, kernels=kernels)
    fpt = flops_per_token(d, a.seq_len)
    grad_accum = accumulation(tp.global_batch, tp.micro_batch, world.size)
    tokens_per_step = a.micro_batch * grad_accum * a.seq_len
    split = synthetic_split(arch["vocab_size"], max(2 * tp.global_batch, 16), a.seq_len)
    trainer = Trainer(tp=tp, model=model, optimizer=make_optimizer(model, tp), train=split, world=world,
                      grad_accum=grad_accum, start_step=0, end_step=a.warmup + a.steps)
    device_name = torch.cuda.get_device_name(world.device) if a.device == "cuda" else cpu_name()
    print(f"{device_name}: {params:,} parameters, seq_len {a.seq_len}, micro_batch {a.micro_batch} x grad_accum {grad_accum}"
          f" = {tokens_per_step:,} tokens/step, {fpt / 1e9:.3f} GFLOP/token (6N + 12 L q s)", flush=True)

    def sync() -> None:
        if a.device == "cuda":
            torch.cuda.synchronize(world.device)

    model.train()
    times, rows = [], []
    for step in range(a.warmup + a.steps):
        measure = step % GRAD_NORM_EVERY == 0  # the job's cadence (Trainer.run)
        sync()
        t0 = time.perf_counter()
        row = trainer.step(step, measure)
        sync()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
            rows.append(row)
        print(f"step {step}{' (warmup)' if step < a.warmup else ''}: {dt * 1000:.1f} ms, loss {row['loss']['total']:.4f}",
              flush=True)
    assert all(r["tokens"] == tokens_per_step for r in rows), "a batch was cropped: rows must be full length"
    median, p90, mean = statistics.median(times), percentile(times, 0.9), statistics.fmean(times)
    tokens_per_s = tokens_per_step / median
    achieved = tokens_per_s * fpt
    precision = "tf32" if a.tf32 else a.precision
    peaks = known_peaks(device_name) if a.device == "cuda" else None
    peak = a.peak_tflops if a.peak_tflops is not None else (peaks[precision] if peaks else None)
    result = {
        "benchmark": "KD optimizer step (runtime.train.loop.Trainer.step), toy spec's loss terms",
        "device": a.device, "device_name": device_name, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda if a.device == "cuda" else None,
        "architecture": arch, "small": a.small, "params": params,
        "dtype": a.precision, "tf32_matmul": a.tf32, "autocast": "bfloat16" if a.precision == "bf16" else None,
        "compute": compute,
        "seq_len": a.seq_len, "micro_batch": a.micro_batch, "grad_accum": grad_accum, "tokens_per_step": tokens_per_step,
        "top_k": TOP_K, "loss_terms": sorted(tp.losses), "warmup_steps": a.warmup, "measured_steps": a.steps,
        "step_s_median": median, "step_s_p90": p90, "step_s_mean": mean, "step_s_all": times,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt, "flops_per_token_formula": "6 N + 12 L q s (compiler.analysis.estimates.flops_per_token)",
        "attention_flops_per_token": attention_flops_per_token(d, a.seq_len),
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak, "peak_basis": ("--peak-tflops" if a.peak_tflops is not None
                                            else f"{precision} dense, data sheet" if peak else None),
        "mfu": achieved / (peak * 1e12) if peak else None,
        "mfu_vs_bf16_dense_peak": achieved / (peaks["bf16"] * 1e12) if peaks else None,
        "final_loss": rows[-1]["loss"]["total"],
        "command": " ".join(shlex.quote(x) for x in [".venv/bin/python", "bench/bench_kd_step.py",
                                                    *(sys.argv[1:] if argv is None else argv)]),
    }
    result["estimate_total_gib"] = estimate.total / 2**30
    if a.device == "cuda":
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(world.device) / 2**30
        result["memory_vs_estimate"] = result["max_memory_allocated_gib"] / result["estimate_total_gib"]
    out = a.out or ROOT / "bench" / "results" / f"kd_step_{a.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (no peak for this device)"
    print(f"median {median * 1000:.1f} ms/step (p90 {p90 * 1000:.1f}), {tokens_per_s:,.0f} tokens/s, "
          f"{result['achieved_tflops']:.3f} TFLOP/s, MFU {mfu} -> {out}")
    return result


if __name__ == "__main__":
    main()
