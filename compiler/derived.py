"""Derived values, computed once: parameters, bytes under the recipe, KV cache, memory, FLOPs."""

from __future__ import annotations

from dataclasses import dataclass

from .modules import canonical_modules
from .resolve import DTYPE_BYTES, quant_plan
from .schema.deploy import Profile
from .schema.spec import Spec
from .schema.teacher import TrainTeacher


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


def _teacher_params(spec: Spec) -> int | None:
    if not isinstance(spec.teacher, TrainTeacher):
        return None
    t = spec.teacher.architecture
    arch = spec.architecture.model_copy(update=t.model_dump() | {"mlp": t.mlp})
    return sum(m.params for m in canonical_modules(arch))


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
    weight_bytes = sum(q.weight_bytes(compute) for q in plan) + norm_bytes
    kv = 2 * arch.n_layers * arch.n_kv_heads * arch.d_head * DTYPE_BYTES[spec.quantization.kv_cache]
    per_step = {}
    tokens = 0
    start = 0
    for stage in tr.curriculum:
        step_tokens = stage.seq_len * tr.micro_batch * tr.grad_accum * tr.resources.nproc * tr.resources.nodes
        per_step[stage.seq_len] = step_tokens
        tokens += step_tokens * max(0, stage.until_step - start)
        start = stage.until_step
    teacher_params = _teacher_params(spec)
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
    )
