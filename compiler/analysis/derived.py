"""Derived values, computed once: parameters, bytes under the recipe, KV cache, memory, FLOPs.

Training estimates (per-rank memory under the spec's strategy, FLOPs per step) use the
formulas of `estimates.py`; docs/scale.md walks through them for worker-9b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compiler.analysis.estimates import Dims, Kernels, RankMemory, attention_flops_per_token, flops_per_token, rank_memory
from compiler.analysis.modules import Module, canonical_modules
from compiler.analysis.resolve import DTYPE_BYTES, quant_plan
from compiler.schema.architecture import Architecture
from compiler.schema.deploy import Profile
from compiler.schema.spec import Spec
from compiler.schema.teacher import TrainTeacher


@dataclass(frozen=True)
class Derived:
    params: int
    params_by_kind: dict[str, int]
    weight_bytes: int
    dense_fp16_bytes: int
    kv_bytes_per_token: int
    tokens_per_step: dict[int, int]  # seq_len -> tokens per optimizer step
    training_tokens: int
    training_flops: float
    teacher_params: int | None
    teacher_training_flops: float | None
    world: int  # ranks: nodes x nproc
    global_batch: int  # sequences per optimizer step: micro_batch x grad_accum x world
    step_flops: dict[int, float]  # seq_len -> FLOPs per optimizer step, attention included
    training_attention_flops: float  # the attention term over all of training (on top of training_flops)
    rank_memory: dict[str, dict[int, RankMemory]]  # training job -> seq_len -> bytes one rank holds
    student_dims: Dims
    teacher_dims: Dims | None

    def profile_bytes(self, p: Profile) -> int:
        return self.weight_bytes + p.sessions * p.context * self.kv_bytes_per_token

    def as_json(self, spec: Spec) -> dict:
        profiles = {
            p.name: {
                "context": p.context,
                "sessions": p.sessions,
                "kv_cache_bytes": p.sessions * p.context * self.kv_bytes_per_token,
                "total_bytes": self.profile_bytes(p),
                "memory_bytes": int(p.memory_gb * (1 << 30)),
                "headroom_bytes": int(p.memory_gb * (1 << 30)) - self.profile_bytes(p),
            }
            for p in spec.deployment.profiles
        }
        return {
            "parameters": self.params,
            "parameters_by_kind": self.params_by_kind,
            "weight_bytes": self.weight_bytes,
            "weight_bytes_dense_fp16": self.dense_fp16_bytes,
            "kv_cache_bytes_per_token": self.kv_bytes_per_token,
            "profiles": profiles,
            "training_tokens": self.training_tokens,
            "training_flops": self.training_flops,
            "teacher_parameters": self.teacher_params,
            "teacher_training_flops": self.teacher_training_flops,
        }


def _teacher_arch(spec: Spec) -> Architecture | None:
    if not isinstance(spec.teacher, TrainTeacher):
        return None
    t = spec.teacher.architecture
    return spec.architecture.model_copy(update=t.model_dump() | {"mlp": t.mlp})


def dims(arch: Architecture, modules: list[Module], qat_params: int = 0) -> Dims:
    """fsdp2 units as runtime/distributed/parallel.py shards them: each decoder layer, then the
    root (embedding, final norm and lm_head together)."""
    units: dict[str, int] = {}
    for m in modules:
        unit = ".".join(m.name.split(".")[:2]) if m.name.startswith("layers.") else "root"
        units[unit] = units.get(unit, 0) + m.params
    layer_linear = sum(math.prod(m.shape) for m in modules if m.kind == "linear" and m.name.startswith("layers."))
    head = arch.vocab_size * arch.d_model
    return Dims(params=sum(units.values()), n_layers=arch.n_layers, d_model=arch.d_model, n_heads=arch.n_heads,
                d_head=arch.d_head, mlp_hidden=arch.mlp.hidden, vocab_size=arch.vocab_size,
                largest_unit=max(units.values()), qat_params=qat_params, n_kv_heads=arch.n_kv_heads,
                layer_linear_params=layer_linear, head_params=head)


def kernels(spec: Spec) -> Kernels:
    """`training.compute` and the loss terms, as the estimate reads them."""
    c, ls = spec.training.compute, spec.training.losses
    sparse = getattr(spec.teacher, "kind", None) == "openai_compatible"
    copies = 1 + (1 if ls.kl is not None else 0)  # the fp32 logits, and the tempered (dense) or knocked-out (sparse) copy
    return Kernels(precision=c.precision, attention=c.attention, recompute=c.activation_checkpointing,
                   loss_chunk=c.loss_chunk, logit_copies=copies, top_k=0 if spec.teacher is None or (sparse and ls.kl is None) else spec.teacher.top_k)


def _training_memory(spec: Spec, student: Dims, teacher: Dims | None) -> dict[str, dict[int, RankMemory]]:
    tr, res = spec.training, spec.training.resources
    world = res.nodes * res.nproc
    out: dict[str, dict[int, RankMemory]] = {}
    if teacher is not None:  # the trained teacher's own loop: fp32, eager, whole logits (runtime/jobs/teacher_train.py)
        t = spec.teacher
        out["teacher"] = {t.seq_len: rank_memory(teacher, res.strategy, world, t.micro_batch, t.seq_len,
                                                 kernels=Kernels(attention="eager", loss_chunk=0, logit_copies=2))}
    k = kernels(spec)
    seq_lens = sorted({stage.seq_len for stage in tr.curriculum})
    out["train"] = {s: rank_memory(student, res.strategy, world, tr.micro_batch, s, kernels=k) for s in seq_lens}
    if tr.qat.enabled:
        out["qat"] = {s: rank_memory(student, res.strategy, world, tr.micro_batch, s, qat=True, kernels=k) for s in seq_lens}
    return out


def derive(spec: Spec) -> Derived:
    arch, tr = spec.architecture, spec.training
    modules = canonical_modules(arch)
    by_kind: dict[str, int] = {}
    for m in modules:
        by_kind[m.kind] = by_kind.get(m.kind, 0) + m.params
    params = sum(by_kind.values())
    compute = spec.precision.compute
    plan = quant_plan(spec, modules)
    norm_bytes = by_kind.get("norm", 0) * DTYPE_BYTES[compute]
    bias_bytes = sum(m.bias for m in modules) * DTYPE_BYTES[compute]  # biases stay dense
    weight_bytes = sum(q.weight_bytes(compute) for q in plan) + norm_bytes + bias_bytes
    kv = 2 * arch.n_layers * arch.n_kv_heads * arch.d_head * DTYPE_BYTES[spec.quantization.kv_cache]
    per_step = {}
    tokens = 0
    start = 0
    for stage in tr.curriculum:
        step_tokens = stage.seq_len * tr.micro_batch * tr.grad_accum * tr.resources.nproc * tr.resources.nodes
        per_step[stage.seq_len] = step_tokens
        tokens += step_tokens * max(0, stage.until_step - start)
        start = stage.until_step
    qat_params = sum(math.prod(q.shape) for q in plan if q.kind == "linear" and q.dtype != "none")
    student = dims(arch, modules, qat_params)
    attention_flops = 0.0
    step_flops = {}
    start = 0
    for stage in tr.curriculum:
        step_flops[stage.seq_len] = float(per_step[stage.seq_len] * flops_per_token(student, stage.seq_len))
        attention_flops += per_step[stage.seq_len] * attention_flops_per_token(student, stage.seq_len) * max(0, stage.until_step - start)
        start = stage.until_step
    teacher_arch = _teacher_arch(spec)
    teacher_dims = dims(teacher_arch, canonical_modules(teacher_arch)) if teacher_arch is not None else None
    teacher_params = teacher_dims.params if teacher_dims is not None else None
    teacher_flops = None
    if teacher_params is not None:
        t = spec.teacher
        teacher_flops = 6.0 * teacher_params * t.steps * t.seq_len * t.micro_batch
    return Derived(
        params=params,
        params_by_kind=dict(sorted(by_kind.items())),
        weight_bytes=weight_bytes,
        dense_fp16_bytes=params * 2,
        kv_bytes_per_token=kv,
        tokens_per_step=per_step,
        training_tokens=tokens,
        training_flops=6.0 * params * tokens,
        teacher_params=teacher_params,
        teacher_training_flops=teacher_flops,
        world=tr.resources.nodes * tr.resources.nproc,
        global_batch=tr.micro_batch * tr.grad_accum * tr.resources.nproc * tr.resources.nodes,
        step_flops=step_flops,
        training_attention_flops=float(attention_flops),
        rank_memory=_training_memory(spec, student, teacher_dims),
        student_dims=student,
        teacher_dims=teacher_dims,
    )
