"""Torch-side properties an exported function must have before it is converted.

Each check runs the exported program (`ExportedProgram.module()`), compares it with the eager
student in fp32 and returns a record `{"name", "passed", "max_abs_diff", "tolerance", ...}`:

  prefill_matches_student  logits (and, with a cache, the cache it writes) equal the student's
  causality                changing tokens after position p leaves logits up to p unchanged
  shape_independence       the same prefix gives the same logits at every length the program takes
  decode_reproduces_full   prefill then N decode steps reproduce the full-sequence logits
  decode_uses_cache        perturbing the cache, or the position, changes the logits

Tolerances scale with the logits' magnitude: outputs are cast to the contract dtype (fp16 for
an fp16 package) and the cache holds fp16 values, while the reference runs fp32 without a cache.
Causality is exact (masked positions contribute exact zeros).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from compiler.planning.params import FunctionP
from runtime.model.student import Student

from .program import fn_cache_len
from .wrappers import torch_dtype

REL_TOL = {torch.float16: 5e-3, torch.float32: 1e-4}
DECODE_STEPS = 8
CACHE_EFFECT_MIN = 1e-3  # relative change of the logits a perturbed cache or position must cause


def _tokens(n: int, vocab: int, seed: int) -> Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed)).to(torch.int32)


def _diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _tol(ref: Tensor, dtype: torch.dtype) -> float:
    return REL_TOL[dtype] * max(1.0, float(ref.abs().max()))


def _record(name: str, diff: float, tol: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "passed": diff <= tol, "max_abs_diff": diff, "tolerance": tol, **extra}


class Runner:
    """Calls an exported function; for a stateful one, reads and sets its cache buffers."""

    def __init__(self, program: nn.Module, fn: FunctionP) -> None:
        self.program, self.fn = program, fn
        self.stateful = bool(fn.states)

    def set_cache(self, k: Tensor, v: Tensor) -> None:
        with torch.no_grad():
            self.program.key_cache.copy_(k)
            self.program.value_cache.copy_(v)

    def cache(self) -> tuple[Tensor, Tensor]:
        return self.program.key_cache.clone(), self.program.value_cache.clone()

    @torch.no_grad()
    def __call__(self, *args: Tensor) -> Any:
        return self.program(*args)


def _logits(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _empty_cache(student: Student, length: int, kv: torch.dtype) -> tuple[Tensor, Tensor]:
    k, v = student.empty_cache(1, length)
    return k.to(kv), v.to(kv)


def _random_cache(like: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(like.shape, generator=g).mul(0.5).to(like.dtype)


@torch.no_grad()
def prefill_checks(run: Runner, student: Student, kv: torch.dtype | None) -> list[dict[str, Any]]:
    out_dtype = torch_dtype(run.fn.outputs[0].dtype)
    lengths = sorted(run.fn.seq_lens)
    records = []
    for t in lengths:
        ids = _tokens(t, student.arch.vocab_size, seed=t)
        record, logits = _prefill_matches(run, student, ids, kv, out_dtype)
        records += [record, _causality(run, ids, logits)]
    records.append(_shape_independence(run, student, lengths, out_dtype))
    return records


def _prefill_matches(run: Runner, student: Student, ids: Tensor, kv: torch.dtype | None,
                     out_dtype: torch.dtype) -> tuple[dict[str, Any], Tensor]:
    t = ids.shape[1]
    if run.stateful:
        run.set_cache(*(_random_cache(c, seed=1) for c in run.cache()))  # positions >= T must survive
        before = run.cache()
    out = run(ids)
    logits, ref = _logits(out), student(ids)
    record = _record("prefill_matches_student", _diff(logits, ref), _tol(ref, out_dtype), seq_len=t)
    if kv is None:
        return record, logits
    _, k_ref, v_ref = student.prefill(ids, *_empty_cache(student, t, kv))
    k_ref, v_ref = k_ref[:, :, :, :t], v_ref[:, :, :, :t]
    if run.stateful:
        k, v = run.cache()
        kept = torch.equal(k[:, :, :, t:], before[0][:, :, :, t:]) and torch.equal(v[:, :, :, t:], before[1][:, :, :, t:])
        k, v = k[:, :, :, :t], v[:, :, :, :t]
    else:
        k, v, kept = out[1], out[2], True
    record["cache_diff"] = max(_diff(k, k_ref), _diff(v, v_ref))
    record["cache_beyond_prefill_unchanged"] = kept
    cache_tol = REL_TOL[kv] * max(1.0, float(k_ref.abs().max()), float(v_ref.abs().max()))
    record["passed"] = record["passed"] and record["cache_diff"] <= cache_tol and kept
    return record, logits


def _causality(run: Runner, ids: Tensor, logits: Tensor) -> dict[str, Any]:
    t = ids.shape[1]
    p = t // 2
    changed = ids.clone()
    changed[:, p + 1:] = (changed[:, p + 1:] + 1) % int(ids.max() + 2)
    other = _logits(run(changed))
    return _record("causality", _diff(other[:, :p + 1], logits[:, :p + 1]), 0.0, seq_len=t, position=p,
                   later_logits_changed=_diff(other[:, p + 1:], logits[:, p + 1:]) > 0)


def _shape_independence(run: Runner, student: Student, lengths: list[int], out_dtype: torch.dtype) -> dict[str, Any]:
    """The program at each of its lengths, and the student on the bare prefix, agree on the prefix."""
    p = max(1, lengths[0] // 2)
    prefix = _tokens(p, student.arch.vocab_size, seed=11)
    ref = student(prefix)
    diffs = {}
    for t in lengths:
        tail = _tokens(t - p, student.arch.vocab_size, seed=12 + t)
        diffs[t] = _diff(_logits(run(torch.cat([prefix, tail], dim=1)))[:, :p], ref)
    return _record("shape_independence", max(diffs.values()), _tol(ref, out_dtype), prefix_len=p,
                   per_length={str(k): v for k, v in diffs.items()})


@torch.no_grad()
def decode_checks(run: Runner, student: Student, kv: torch.dtype) -> list[dict[str, Any]]:
    fn, vocab = run.fn, student.arch.vocab_size
    out_dtype = torch_dtype(fn.outputs[0].dtype)
    cache_len = fn_cache_len(fn)
    steps = min(DECODE_STEPS, cache_len - 1)
    prefix_len = max(1, min(cache_len // 4, cache_len - steps))
    ids = _tokens(prefix_len + steps, vocab, seed=5)
    full = student(ids)
    _, k, v = student.prefill(ids[:, :prefix_len], *_empty_cache(student, cache_len, kv))
    k0, v0 = k.clone(), v.clone()
    got = []
    for j in range(steps):
        pos = torch.tensor([prefix_len + j], dtype=torch.int32)
        logits, k, v = _decode_step(run, ids[:, prefix_len + j:prefix_len + j + 1], pos, k, v)
        got.append(logits)
    ref = full[:, prefix_len:]
    reproduce = _record("decode_reproduces_full", _diff(torch.cat(got, dim=1), ref), _tol(ref, out_dtype),
                        prefix_len=prefix_len, steps=steps)
    return [reproduce, _uses_cache(run, ids[:, prefix_len:prefix_len + 1], prefix_len, k0, v0, got[0])]


@torch.no_grad()
def verify_checks(run: Runner, student: Student, kv: torch.dtype) -> list[dict[str, Any]]:
    """`verify` (k + 1 tokens per call) reproduces the full forward, also after a rejected draft: a call
    at an earlier position with other tokens overwrites the stale entries and never reads them."""
    fn, vocab = run.fn, student.arch.vocab_size
    out_dtype = torch_dtype(fn.outputs[0].dtype)
    t, cache_len = fn.seq_lens[0], fn_cache_len(fn)
    prefix_len = max(1, min(cache_len // 4, cache_len - 2 * t))
    ids = _tokens(prefix_len + t, vocab, seed=5)
    alt = _tokens(t, vocab, seed=6)
    _, k, v = student.prefill(ids[:, :prefix_len], *_empty_cache(student, cache_len, kv))
    k0, v0 = k.clone(), v.clone()
    pos = torch.tensor([prefix_len], dtype=torch.int32)
    logits, k, v = _decode_step(run, ids[:, prefix_len:], pos, k, v)
    ref = student(ids)[:, prefix_len:]
    reproduce = _record("verify_reproduces_full", _diff(logits, ref), _tol(ref, out_dtype), prefix_len=prefix_len, tokens=t)
    # the app accepted one token of the draft: the next call starts right after it, with other tokens
    again, _, _ = _decode_step(run, alt, torch.tensor([prefix_len + 1], dtype=torch.int32), k, v)
    ref2 = student(torch.cat([ids[:, :prefix_len + 1], alt], dim=1))[:, prefix_len + 1:]
    rejected = _record("verify_after_a_rejected_draft", _diff(again, ref2), _tol(ref2, out_dtype), accepted=1)
    return [reproduce, rejected, _uses_cache(run, ids[:, prefix_len:], prefix_len, k0, v0, logits)]


def _decode_step(run: Runner, token: Tensor, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if run.stateful:
        run.set_cache(k, v)
        logits = _logits(run(token, pos))
        return (logits, *run.cache())
    logits, k, v = run(token, pos, k, v)
    return logits, k, v


def _uses_cache(run: Runner, token: Tensor, prefix_len: int, k: Tensor, v: Tensor, logits: Tensor) -> dict[str, Any]:
    scale = max(1.0, float(logits.float().abs().max()))
    pos = torch.tensor([prefix_len], dtype=torch.int32)
    k_noisy, v_noisy = k.clone(), v.clone()
    k_noisy[:, :, :, :prefix_len] += _random_cache(k[:, :, :, :prefix_len], seed=3)
    v_noisy[:, :, :, :prefix_len] += _random_cache(v[:, :, :, :prefix_len], seed=4)
    cache_effect = _diff(_decode_step(run, token, pos, k_noisy, v_noisy)[0], logits) / scale
    moved = torch.tensor([prefix_len - 1], dtype=torch.int32) if prefix_len > 1 else torch.tensor([prefix_len + 1], dtype=torch.int32)
    position_effect = _diff(_decode_step(run, token, moved, k, v)[0], logits) / scale
    passed = cache_effect >= CACHE_EFFECT_MIN and position_effect >= CACHE_EFFECT_MIN
    return {"name": "decode_uses_cache", "passed": passed, "cache_effect": cache_effect,
            "position_effect": position_effect, "minimum": CACHE_EFFECT_MIN}
