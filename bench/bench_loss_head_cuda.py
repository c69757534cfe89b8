"""The output layer + cross-entropy on a GPU: the train job's chunked torch head against Liger-Kernel's fused kernel.

    python3 bench/bench_loss_head_cuda.py --out bench/results/loss_head_cuda.json   # in bench/gpu_kd_step.sh

Issue 16 asked for a fused CUDA loss "where it computes the same terms". This measures, side by side in one
process on one GPU, the cost of the part a fused kernel can replace -- the `[tokens, d] x [d, V]` output layer
and cross-entropy on the data's next token, forward and backward -- three ways:

- `whole`: logits `h W^T` in bf16 (autocast), then `F.cross_entropy` in fp32: what a naive trainer does;
- `chunked`: `runtime.train.head.LossHead` with only `ce_ground_truth` configured (the train job's head: chunks of
  `--chunk` positions, fp32 reductions, each chunk recomputed in backward);
- `chunked_toy`: the same head with the toy spec's full loss set minus length_kd (KL on a top-16 at temperature 2,
  CE on the teacher's argmax, the span terms) -- the terms Liger has no kernel for;
- `liger`: `liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss` (Triton; fp32 accumulation inside).

For each: median wall time of fwd+bwd over --steps after --warmup (cuda-synchronized), peak memory allocated
above the inputs, and the loss value (`chunked` and `liger` must agree to 1e-2 relative in bf16 inputs).
Shape defaults are Llama-3.2-1B's head (d 2048, V 128256) at 8192 tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runtime.train.head import LossHead  # noqa: E402

SPECIAL = {"pad": 0, "bos": 1, "eos": 3, "tool_call_start": 6, "tool_call_end": 7}
TOY_TERMS = {"kl": {"weight": 1.0, "temperature": 2.0}, "ce_teacher": {"weight": 0.5},
             "ce_ground_truth": {"weight": 0.3}, "tool_name": {"weight": 1.0}, "json_args": {"weight": 1.0},
             "integration": {"weight": 0.5}}


def batch(tokens: int, seq: int, vocab: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b = tokens // seq
    ids = torch.randint(9, vocab, (b, seq), generator=g)
    base = torch.randint(0, vocab, (b, seq, 1), generator=g)
    pos = torch.arange(seq)[None].expand(b, -1)
    mask = torch.ones(b, seq, dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask,
           "tool_name_mask": mask * (pos % 7 == 0), "json_args_mask": mask * (pos % 3 == 0),
           "integration_mask": mask * (pos % 5 == 0),
           "topk_ids": (base + torch.arange(16) * (vocab // 16)) % vocab,
           "topk_logits": torch.randn(b, seq, 16, generator=g).sort(dim=-1, descending=True).values * 3}
    return {k: v.to(device) for k, v in out.items()}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(name: str, fn, h: torch.Tensor, w: torch.Tensor, steps: int, warmup: int) -> dict:
    cuda = h.is_cuda
    times, value, base = [], None, 0
    for i in range(warmup + steps):
        h.grad = w.grad = None
        _sync()
        if i == warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        loss = fn(h, w)
        loss.backward()
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        value = float(loss.detach())
    peak = torch.cuda.max_memory_allocated() - base if cuda else 0
    return {"name": name, "median_ms": round(statistics.median(times) * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
            "peak_extra_gib": round(peak / 2**30, 3), "loss": value}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the same code (no memory figures)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loss_head_cuda.json")
    a = ap.parse_args(argv)
    dev = a.device
    torch.manual_seed(0)
    bt = batch(a.tokens, a.seq, a.vocab, dev)
    b = a.tokens // a.seq
    # the final hidden states and the output weight, as the train job hands them to the head (bf16 under autocast;
    # the fp32 master weight is cast by autocast inside F.linear)
    h = (torch.randn(b, a.seq, a.d, device=dev) * 0.5).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(a.vocab, a.d, device=dev) * 0.02).requires_grad_()
    targets = bt["input_ids"][:, 1:].reshape(-1)

    def whole(h, w):
        with torch.autocast(dev, dtype=torch.bfloat16):
            logits = F.linear(h[:, :-1], w)
        return F.cross_entropy(logits.float().reshape(-1, a.vocab), targets)

    def chunked(cfg):
        def fn(h, w):
            with torch.autocast(dev, dtype=torch.bfloat16):
                terms = LossHead(bt, cfg, SPECIAL, a.chunk)(h, w)["terms"]
            return sum(cfg[k]["weight"] * v for k, v in terms.items())
        return fn

    rows = [run("whole", whole, h, w, a.steps, a.warmup),
            run("chunked", chunked({"ce_ground_truth": {"weight": 1.0}}), h, w, a.steps, a.warmup),
            run("chunked_toy", chunked(TOY_TERMS), h, w, a.steps, a.warmup)]
    liger_error = None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        lce = LigerFusedLinearCrossEntropyLoss()

        def liger(h, w):
            return lce(w.to(torch.bfloat16), h[:, :-1].reshape(-1, a.d), targets)

        rows.append(run("liger", liger, h, w, a.steps, a.warmup))
    except Exception as e:  # noqa: BLE001 -- recorded in the result, the torch rows still stand
        liger_error = f"{type(e).__name__}: {e}"[:500]
    by = {r["name"]: r for r in rows}
    agree = None
    if "liger" in by:
        agree = abs(by["liger"]["loss"] - by["chunked"]["loss"]) / abs(by["chunked"]["loss"])
    result = {"bench": "loss_head_cuda", "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
              "python": platform.python_version(), "tokens": a.tokens, "seq": a.seq, "d_model": a.d,
              "vocab": a.vocab, "chunk": a.chunk, "steps": a.steps, "warmup": a.warmup, "rows": rows,
              "liger_vs_chunked_relative_loss_difference": agree, "liger_error": liger_error,
              "speedup_liger_over_chunked": (round(by["chunked"]["median_ms"] / by["liger"]["median_ms"], 3)
                                             if "liger" in by else None)}
    try:
        import liger_kernel
        result["liger_kernel"] = getattr(liger_kernel, "__version__", "unknown")
    except ImportError:
        pass
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
