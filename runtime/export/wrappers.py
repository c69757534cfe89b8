"""One nn.Module per package function, with exactly the contract's inputs, outputs and states.

State mode keeps the KV cache in registered buffers named, shaped and typed like the contract's
states (`key_cache`, `value_cache`); torch.export lifts them as mutable buffers and coremltools
turns those into `StateType`s. Writes are in place and indexed in-graph: prefill assigns the
positions 0..T-1 of each layer (T is the input's length, a shape, never data); decode assigns the
layer `where(k_pos == position, k, cache)` with the `position` input tensor, as
`Student.decode` does, so nothing data-dependent is frozen at export time.

Writes are plain assignments of fp32 values into the kv-dtype buffer: the assignment (`copy_`)
rounds to the buffer's dtype. An explicit `.to(fp16)` before an indexed write would be exact
in torch too, but coremltools' torch.export frontend reads states as fp32 and its `index_put` /
`select_scatter` do not promote dtypes, so the cast would make the conversion fail.
Explicit mode takes and returns the cache as tensors instead.

Every wrapper computes in the student's dtype (fp32 at export) and casts its outputs to the
contract's dtypes, so the exported program's signature is the contract's, dtypes included.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compiler.planning.params import FunctionP, TensorP
from runtime.model.student import Student, allowed_mask, span

DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "int32": torch.int32}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"contract dtype {name!r} has no torch equivalent here (known: {sorted(DTYPES)})")
    return DTYPES[name]


def tensor(tensors: list[TensorP], name: str) -> TensorP:
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"the contract has no tensor named {name!r} (has {[t.name for t in tensors]})")


def _static(shape: list[int | str], what: str) -> list[int]:
    if any(isinstance(d, str) for d in shape):
        raise ValueError(f"{what}: shape {shape} must be static")
    return [int(d) for d in shape]


class _Function(nn.Module):
    """The student under `model` (so module paths read `model.<canonical name>`)."""

    def __init__(self, model: Student, fn: FunctionP) -> None:
        super().__init__()
        self.model = model
        self.logits_dtype = torch_dtype(tensor(fn.outputs, "logits").dtype)
        # the halt head's output (docs/roles.md#the-halt-head): returned after the logits
        self.halt = any(o.name == "halt" for o in fn.outputs)
        self.halt_dtype = torch_dtype(tensor(fn.outputs, "halt").dtype) if self.halt else None

    def _out(self, result) -> Tensor | tuple[Tensor, Tensor]:
        """`run_layers`'s result cast to the contract: the logits, or (logits, halt)."""
        if self.halt:
            logits, halt = result
            return logits.to(self.logits_dtype), halt.to(self.halt_dtype)
        return result.to(self.logits_dtype)


def _positions(input_ids: Tensor) -> Tensor:
    """Positions 0..T-1 `[1, T]` derived from the input, not from `arange`: coremltools folds
    arange-derived values (the causal mask, RoPE tables) into per-function constants, which a
    multifunction package cannot share; computed from the input they cost a few ops instead."""
    return torch.cumsum(torch.ones_like(input_ids[:1]), dim=1, dtype=torch.int32) - 1


class PlainPrefill(_Function):
    """Prefill without a cache (the package has no decode function)."""

    def forward(self, input_ids: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.halt:
            pos = _positions(input_ids)
            return self._out(self.model.run_layers(input_ids, pos, allowed_mask(pos, pos), None, halt=True))
        return self.model(input_ids, position_ids=_positions(input_ids)).to(self.logits_dtype)


class JudgePrefill(_Function):
    """A judge's one prefill (no cache): the logits and the verdict head's outputs at every position."""

    def __init__(self, model: Student, fn: FunctionP) -> None:
        super().__init__(model, fn)
        self.judge_dtype = torch_dtype(tensor(fn.outputs, "judge").dtype)

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        logits, judge = self.model.judge_outputs(input_ids, position_ids=_positions(input_ids))
        return logits.to(self.logits_dtype), judge.to(self.judge_dtype)


class StateCache(_Function):
    """Holds `key_cache` / `value_cache` buffers shaped and typed as the contract's states."""

    def __init__(self, model: Student, fn: FunctionP) -> None:
        super().__init__(model, fn)
        for name in ("key_cache", "value_cache"):
            state = tensor(fn.states, name)
            self.register_buffer(name, torch.zeros(_static(state.shape, f"state {name}"), dtype=torch_dtype(state.dtype)))


def _write_prefix(cache: Tensor, layer: int, new: Tensor, t: int | torch.SymInt) -> None:
    """Positions 0..t-1 of `cache[layer]` `[B, H, S, D]` := `new` `[B, H, t, D]`, in place.

    A static t is a slice assignment (a `slice_update` in CoreML). A symbolic t (enumerated
    shapes) cannot be: torch.export guards a partial slice against covering the whole cache
    (t == S), which the enumerated range allows, so the layer is rewritten as a `where` over
    positions of `new` gathered at the written positions (index 0 elsewhere, then discarded)."""
    if isinstance(t, int):
        cache[layer, :, :, :t] = new
        return
    s = cache.shape[3]
    positions = torch.arange(s, device=cache.device)
    written = positions < t
    gathered = new.index_select(2, torch.where(written, positions, torch.zeros_like(positions)))
    cache[layer] = torch.where(written.view(1, 1, s, 1), gathered, cache[layer])


class StatePrefill(StateCache):
    """Tokens at positions 0..T-1; writes cache positions 0..T-1 and attends to the fresh k/v."""

    def forward(self, input_ids: Tensor) -> Tensor:
        t = input_ids.shape[1]
        pos = _positions(input_ids)

        def writer(i: int):
            def write(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                _write_prefix(self.key_cache, i, k, t)
                _write_prefix(self.value_cache, i, v, t)
                return k, v
            return write

        return self._out(self.model.run_layers(input_ids, pos, allowed_mask(pos, pos),
                                               [writer(i) for i in range(len(self.model.layers))], halt=self.halt))


class StateDecode(StateCache):
    """One token at `position`: written to the cache, then attends to cache positions <= it."""

    def forward(self, input_ids: Tensor, position: Tensor) -> Tensor:
        cache_len = self.key_cache.shape[3]
        k_pos = torch.arange(cache_len, device=input_ids.device)
        q_pos = position.reshape(1, 1).to(k_pos.dtype)

        hit = (k_pos == q_pos.reshape(1)).view(1, 1, cache_len, 1)

        def writer(i: int):
            def write(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                self.key_cache[i] = torch.where(hit, k, self.key_cache[i])
                self.value_cache[i] = torch.where(hit, v, self.value_cache[i])
                return self.key_cache[i], self.value_cache[i]
            return write

        return self._out(self.model.run_layers(input_ids, q_pos, allowed_mask(q_pos, k_pos[None]),
                                               [writer(i) for i in range(len(self.model.layers))], halt=self.halt))


class StateVerify(StateCache):
    """k + 1 tokens at `position` .. `position` + k (the last accepted token and k drafted ones):
    written to the cache, each attending to the cache at positions <= its own (`Student.extend`).
    Entries past the written span (a rejected draft's) are neither read nor changed."""

    def forward(self, input_ids: Tensor, position: Tensor) -> Tensor:
        t = input_ids.shape[1]
        cache_len = self.key_cache.shape[3]
        k_pos = torch.arange(cache_len, device=input_ids.device)
        start = position.reshape(1).to(k_pos.dtype)
        q_pos = (start + torch.arange(t, device=input_ids.device))[None]
        written, index = span(k_pos, start, t)

        def writer(i: int):
            def write(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                self.key_cache[i] = torch.where(written, k.to(self.key_cache.dtype).index_select(2, index), self.key_cache[i])
                self.value_cache[i] = torch.where(written, v.to(self.value_cache.dtype).index_select(2, index), self.value_cache[i])
                return self.key_cache[i], self.value_cache[i]
            return write

        return self._out(self.model.run_layers(input_ids, q_pos, allowed_mask(q_pos, k_pos[None]),
                                               [writer(i) for i in range(len(self.model.layers))], halt=self.halt))


class ExplicitVerify(_Function):
    """`Student.extend` with the cache as inputs and the updated cache as outputs."""

    def forward(self, input_ids: Tensor, position: Tensor, key_cache: Tensor,
                value_cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, k, v = self.model.extend(input_ids, position, key_cache, value_cache)
        return logits.to(self.logits_dtype), k, v


class ExplicitPrefill(_Function):
    """Returns the logits and the T positions' keys and values `[n_layers, B, n_kv_heads, T, d_head]`."""

    def __init__(self, model: Student, fn: FunctionP) -> None:
        super().__init__(model, fn)
        self.kv_dtype = torch_dtype(tensor(fn.outputs, "present_keys").dtype)

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = input_ids.shape[1]
        pos = _positions(input_ids)
        keys: list[Tensor] = []
        values: list[Tensor] = []

        def collect(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            keys.append(k.to(self.kv_dtype))
            values.append(v.to(self.kv_dtype))
            return k, v

        logits = self.model.run_layers(input_ids, pos, allowed_mask(pos, pos), [collect] * len(self.model.layers))
        return logits.to(self.logits_dtype), torch.stack(keys), torch.stack(values)


class ExplicitDecode(_Function):
    """`Student.decode` with the cache as inputs and the updated cache as outputs."""

    def forward(self, input_ids: Tensor, position: Tensor, key_cache: Tensor,
                value_cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, k, v = self.model.decode(input_ids, position, key_cache, value_cache)
        return logits.to(self.logits_dtype), k, v


def wrap(model: Student, fn: FunctionP, decode_cache: str | None) -> nn.Module:
    """The module whose export is `fn`: chosen by role and by how the contract carries the cache."""
    if any(o.name == "halt" for o in fn.outputs) and any(o.name == "present_keys" for o in fn.outputs):
        raise ValueError(f"function {fn.name!r}: the halt output is exported with the cache in states only")
    if fn.role == "prefill":
        if any(o.name == "judge" for o in fn.outputs):
            if fn.states or len(fn.outputs) != 2:
                raise ValueError(f"function {fn.name!r}: a judge's prefill has no cache (its spec disables decode)")
            return JudgePrefill(model, fn)
        if fn.states:
            return StatePrefill(model, fn)
        if any(o.name == "present_keys" for o in fn.outputs):
            return ExplicitPrefill(model, fn)
        return PlainPrefill(model, fn)
    if decode_cache == "state":
        return StateVerify(model, fn) if fn.role == "verify" else StateDecode(model, fn)
    if decode_cache == "explicit":
        return ExplicitVerify(model, fn) if fn.role == "verify" else ExplicitDecode(model, fn)
    raise ValueError(f"function {fn.name!r}: decode needs decode_cache 'state' or 'explicit', got {decode_cache!r}")
