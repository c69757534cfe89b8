"""The README's "Training at scale" section and the compile warnings about training memory.

Plain values for `templates/README.md.j2`, computed from `Derived` (formulas in estimates.py).
The rules reject a model state that cannot fit `training.resources.memory_gb`; activations
depend on the runtime's kernels, so a total above it is a warning here, not an error.
"""

from __future__ import annotations

from compiler.planning.compile import Compiled
from compiler.analysis.derived import kernels
from compiler.analysis.estimates import attention_flops_per_token
from compiler.output.launch import launched_jobs
from compiler.output.text import human_bytes



def assumptions(c: Compiled) -> str:
    """The training.compute settings the estimate follows, in words."""
    k = kernels(c.spec)
    parts = ["fp32 weights, gradients and AdamW state",
             "bf16 autocast (fp32 residual stream and norms)" if k.precision == "bf16" else "fp32 activations",
             "sdpa attention (no seq_len^2 scores)" if k.attention == "sdpa" else "eager attention keeps its softmax (seq_len^2 per head and layer)",
             "each decoder layer recomputed in the backward pass" if k.recompute else "activations of one micro-batch kept for the backward pass",
             f"the loss in chunks of {k.loss_chunk} positions (logits never whole)" if k.loss_chunk else "whole fp32 logits kept for the loss"]
    return "; ".join(parts) + " (training.compute)"


def _memory_gib(c: Compiled) -> float | None:
    return c.spec.training.resources.memory_gb


def memory_rows(c: Compiled) -> list[dict]:
    have = _memory_gib(c)
    rows = []
    for job, by_len in c.derived.rank_memory.items():
        for seq_len, m in sorted(by_len.items()):
            fits = "-" if have is None else ("yes" if m.total <= have * (1 << 30) else "no")
            rows.append({"job": job, "seq_len": seq_len, "state": human_bytes(m.state), "activations": human_bytes(m.activations),
                         "scores": human_bytes(m.attention_scores), "logits": human_bytes(m.logits),
                         "cast": human_bytes(m.cast_weights), "transient": human_bytes(m.transient),
                         "total": human_bytes(m.total), "fits": fits})
    return rows


def flops_rows(c: Compiled) -> list[dict]:
    d, tr = c.derived, c.spec.training
    rows, start = [], 0
    for stage in tr.curriculum:
        s = stage.seq_len
        steps = max(0, stage.until_step - start)
        start = stage.until_step
        attention = attention_flops_per_token(d.student_dims, s) * d.tokens_per_step[s]
        rows.append({"seq_len": s, "steps": steps, "tokens": f"{d.tokens_per_step[s]:,}", "step_flops": f"{d.step_flops[s]:.3g}",
                     "attention": _share(attention, d.step_flops[s]), "total": f"{d.step_flops[s] * steps:.3g}"})
    return rows


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def training_context(c: Compiled) -> dict:
    d, res, tr = c.derived, c.spec.training.resources, c.spec.training
    have = _memory_gib(c)
    return {
        "placement": f"{res.nodes} node(s) x {res.nproc} process(es) = {d.world} rank(s), {res.device}, {res.strategy}",
        "global_batch": f"{d.global_batch} sequences (micro_batch {tr.micro_batch} x grad_accum {tr.grad_accum} x {d.world} ranks)",
        "device_memory": f"{have:g} GiB" if have is not None else "not given (set training.resources.memory_gb to check)",
        "memory_header": f"fits {have:g} GiB" if have is not None else "fits",
        "assumptions": assumptions(c),
        "memory_rows": memory_rows(c),
        "flops_rows": flops_rows(c),
        "flops_total": f"{d.training_flops + d.training_attention_flops:.3g}",
        "flops_attention_share": _share(d.training_attention_flops, d.training_flops + d.training_attention_flops),
        "training_tokens_exact": f"{d.training_tokens:,}",
        "launch": [{"job": j.id, "sbatch": f"launch/{j.id}.sbatch", "k8s": f"launch/{j.id}.k8s.yaml"} for j in launched_jobs(c)],
    }


def fit_warnings(c: Compiled) -> list[str]:
    """One line per training job whose per-rank estimate exceeds memory_gb at some seq_len."""
    have = _memory_gib(c)
    if have is None:
        return []
    out = []
    for job, by_len in c.derived.rank_memory.items():
        over = [(s, m) for s, m in sorted(by_len.items()) if m.total > have * (1 << 30)]
        if not over:
            continue
        s, m = over[0]
        out.append(f"{job} at seq_len {s} needs an estimated {human_bytes(m.total)} per rank (model state {human_bytes(m.state)}, "
                   f"activations {human_bytes(m.activations)}, attention scores {human_bytes(m.attention_scores)}, "
                   f"logits {human_bytes(m.logits)}, bf16 weight copies {human_bytes(m.cast_weights)}, transient "
                   f"{human_bytes(m.transient)}) but training.resources.memory_gb is {have:g}: " + _fit_hint(c))
    return out


def _fit_hint(c: Compiled) -> str:
    """What in training.compute or the batch would shrink the estimate (docs/scale.md)."""
    k, tr = kernels(c.spec), c.spec.training
    hints = []
    if tr.micro_batch > 1:
        hints.append("lower micro_batch")
    if k.attention == "eager":
        hints.append("training.compute.attention: sdpa")
    if not k.recompute:
        hints.append("training.compute.activation_checkpointing: true")
    if k.precision == "fp32":
        hints.append("training.compute.precision: bf16")
    if k.loss_chunk == 0:
        hints.append("training.compute.loss_chunk: 1024")
    if not hints:
        return "shard over more ranks, use shorter curriculum lengths or larger devices (docs/scale.md)"
    return "set " + ", ".join(hints) + " (docs/scale.md)"
