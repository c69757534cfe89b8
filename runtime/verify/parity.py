"""Numeric parity of a package on Linux: the reference interpreter against torch.

Per function (and its enumerated lengths), on seeded token sequences, some right-padded:
  - conversion fidelity: interpreter (fp32 reference mode) vs torch with the package's own
    dequantized weights: `snr_db`, `top1_agreement` (non-padded positions only);
  - quantization loss: interpreter vs torch with the trained checkpoint: `quant_snr_db`,
    `quant_top1_agreement`;
  - the device's fp16 storage: interpreter in fp16 emulation vs the same torch reference:
    `fp16_snr_db`, `fp16_top1_agreement`, and every op whose output is inf/NaN (`nonfinite`);
  - invariants, each a named check that passes or fails with a message: no op unknown to the
    interpreter; the package's weights are the checkpoint's, module by module; causality
    (changing tokens after p leaves logits up to p unchanged); prefill followed by decode steps
    (states threaded through) equals the full-sequence logits; no non-finite intermediates.
The golden inputs and outputs (interpreter, fp16 emulation, torch) are saved for a later run of
the same vectors with CoreML on Apple hardware.

What runs is the spec's `export.parity` (lengths, samples, compared positions, decode steps). It
runs in phases so that one model is in memory at a time: torch with the checkpoint, the package's
weights streamed into that same model (`weights.py`), then the fp32 interpreter, then the fp16 one.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from compiler.planning.params import FunctionP

from .checks import Check
from .interp import CONST_CACHE_MB, Interpreter, UnsupportedOp
from .program import ProgramError
from .observe import weight_root
from .parity_metrics import SNR_CAP_DB, head_metrics, snr_db, summarize, top1  # noqa: F401  (top1, SNR_CAP_DB: public here too)
from .weights import package_state_dict, package_weights, weights_check

CAUSAL_TOL = 1e-4  # max |Δlogit| / max |logit| at positions before the change (fp32 reference mode)
# prefill+decode vs full sequence, both in the interpreter's fp32 reference mode: equal up to
# round-off (>100 dB on the toy); a decode that ignores its cache lands below 10 dB
DECODE_SNR_DB = 40.0
PAD_ID = 0


@dataclass
class Sample:
    ids: np.ndarray  # [1, L] int32, right-padded
    n: int  # real tokens
    positions: np.ndarray  # the real positions whose logits are compared and kept (ascending)


@dataclass
class Figures:
    """Logits at each sample's `positions` ([len(positions), vocab] float32 per sample)."""

    ref: list[np.ndarray] = field(default_factory=list)  # torch, package weights
    ckpt: list[np.ndarray] = field(default_factory=list)  # torch, checkpoint
    interp: list[np.ndarray] = field(default_factory=list)
    fp16: list[np.ndarray] = field(default_factory=list)


def positions_of(n: int, limit: int | None) -> np.ndarray:
    """The positions compared in a sample of `n` real tokens: all of them when `limit` is None or
    not smaller, else `limit` evenly spaced ones, the first and the last always among them."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(limit, 2)).round().astype(np.int64))


def _samples(length: int, count: int, vocab: int, seed: int, first_token: int, decode_steps: int,
             positions: int | None = None) -> list[Sample]:
    rng = np.random.default_rng(seed)
    lengths = [length, max(1, length - decode_steps), max(1, (3 * length) // 4), max(1, length // 2)]
    out = []
    for i in range(count):
        n = lengths[i % len(lengths)]
        ids = np.full((1, length), PAD_ID, dtype=np.int32)
        ids[0, :n] = rng.integers(first_token, vocab, size=n)
        out.append(Sample(ids, n, positions_of(n, positions)))
    return out


@dataclass
class Shape:
    """One shape's samples and the extra tokens its prefill_then_decode check appends."""

    length: int
    samples: list[Sample]
    extra: list[int] = field(default_factory=list)
    fig: Figures = field(default_factory=Figures)
    full_torch: np.ndarray | None = None  # torch's logits of the prefill_then_decode continuation, when longer than `length`
    checks: list[Check] = field(default_factory=list)


class Parity:
    """The comparisons for one function of one package, phase by phase so that one model is in
    memory at a time: torch with the checkpoint, torch with the package's weights (written into the
    same model), then the reference interpreter, then the fp16 one."""

    def __init__(self, package: Path, fn: FunctionP, vocab: int, decode_steps: int, cache_mb: float = CONST_CACHE_MB):
        self.package, self.fn, self.vocab, self.decode_steps, self.cache_mb = Path(package), fn, vocab, decode_steps, cache_mb
        self.nonfinite: list[str] = []
        self.interp: Interpreter | None = None
        self.has_decode = False  # the package has a decode function (read by `unsupported`, which runs first)
        # a head's output beside the logits (a judge's verdict head, the halt head): compared like them, per figure
        self.extra = next((o.name for o in fn.outputs if o.name in ("judge", "halt")), None)
        self.extra_figs: dict[str, list[np.ndarray]] = {"ckpt": [], "ref": [], "interp": [], "fp16": []}
        self._last_extra: np.ndarray | None = None

    # --- torch --------------------------------------------------------------------------------

    @staticmethod
    def _torch(model: Any, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return model(torch.from_numpy(ids.astype(np.int64))).float().numpy()[0]

    def _decode_tokens(self, s: Sample) -> np.ndarray:
        return s.ids[:, : self.decode_steps] if self.fn.role != "prefill" else s.ids[:, : s.n]

    def torch_figures(self, model: Any, shapes: list[Shape], attr: str) -> None:
        import torch

        for shape in shapes:
            for s in shape.samples:
                ids = self._decode_tokens(s)
                if self.extra is None:
                    getattr(shape.fig, attr).append(self._torch(model, ids)[s.positions])
                    continue
                with torch.no_grad():
                    x = torch.from_numpy(ids.astype(np.int64))
                    logits, extra = model.judge_outputs(x) if self.extra == "judge" else model.halt_outputs(x)
                getattr(shape.fig, attr).append(logits.float().numpy()[0][s.positions])
                self.extra_figs[attr].append(extra.float().numpy()[0][s.positions])

    def torch_continuations(self, model: Any, shapes: list[Shape]) -> None:
        """prefill_then_decode's reference when prefill + decode outgrow the function's length."""
        for shape in shapes:
            if self.fn.role == "prefill" and len(shape.samples) > 1 and self.has_decode:
                s = shape.samples[1]
                if s.n + len(shape.extra) > shape.length:
                    ids = np.concatenate([s.ids[:, : s.n], np.array([shape.extra], np.int32)], axis=1)
                    shape.full_torch = self._torch(model, ids)[s.n:]

    # --- interpreter --------------------------------------------------------------------------

    def open(self, fp16: bool) -> Interpreter:
        self.close()
        self.interp = Interpreter(self.package, fp16=fp16, cache_mb=self.cache_mb)
        return self.interp

    def close(self) -> None:
        if self.interp is not None:
            self.interp.close()
            self.interp = None

    def unsupported(self) -> list[str]:
        with Interpreter(self.package, cache_mb=0) as interp:
            self.has_decode = "decode" in interp.functions
            names = [self.fn.name] + (["decode"] if self.has_decode and self.fn.role == "prefill" else [])
            return sorted({op for f in names for op in interp.unsupported_ops(f)})

    def _call(self, function: str, inputs: dict[str, np.ndarray], states: dict | None) -> Any:
        assert self.interp is not None
        result = self.interp.run(function, inputs, states)
        if self.interp.fp16:
            self.nonfinite += [f"{function}:{n}" for n in result.nonfinite if f"{function}:{n}" not in self.nonfinite]
        return result

    def _prefill(self, ids: np.ndarray) -> tuple[np.ndarray, dict]:
        r = self._call(self.fn.name, {"input_ids": ids}, None)
        if self.extra is not None:
            if self.extra not in r.outputs:
                raise ValueError(f"the package's {self.fn.name!r} has no {self.extra!r} output, which the contract lists")
            self._last_extra = np.asarray(r.outputs[self.extra], dtype=np.float32)[0]
        return np.asarray(r.outputs["logits"], dtype=np.float32)[0], r.states

    def _decode(self, tokens: list[int], start: int, states: dict | None) -> np.ndarray:
        out, extra = [], []
        for i, tok in enumerate(tokens):
            r = self._call("decode", {"input_ids": np.array([[tok]], np.int32),
                                      "position": np.array([start + i], np.int32)}, states)
            states = r.states
            out.append(np.asarray(r.outputs["logits"], dtype=np.float32)[0, 0])
            if "halt" in r.outputs:
                extra.append(np.asarray(r.outputs["halt"], dtype=np.float32)[0, 0])
        self._last_extra = np.stack(extra) if extra else None
        return np.stack(out)

    def _verify(self, ids: np.ndarray) -> np.ndarray:
        """`verify` over the tokens in chunks of its length from position 0 (an empty cache), each chunk
        a call at the position after the previous one: the logits of every position."""
        t, states, out, extra = self.fn.seq_lens[0], None, [], []
        for start in range(0, ids.shape[1], t):
            r = self._call("verify", {"input_ids": ids[:, start: start + t], "position": np.array([start], np.int32)}, states)
            states = r.states
            out.append(np.asarray(r.outputs["logits"], dtype=np.float32)[0])
            if "halt" in r.outputs:
                extra.append(np.asarray(r.outputs["halt"], dtype=np.float32)[0])
        self._last_extra = np.concatenate(extra) if extra else None
        return np.concatenate(out)

    def _run(self, ids: np.ndarray) -> np.ndarray:
        """All real-position logits of one input under the function (prefill, decode step by step, verify by chunks)."""
        if self.fn.role == "decode":
            return self._decode([int(t) for t in ids[0]], 0, None)
        if self.fn.role == "verify":
            return self._verify(ids)
        return self._prefill(ids)[0]

    def interp_figures(self, shapes: list[Shape], attr: str) -> None:
        for shape in shapes:
            for s in shape.samples:
                ids = self._decode_tokens(s) if self.fn.role != "prefill" else s.ids
                getattr(shape.fig, attr).append(self._run(ids)[s.positions])
                if self.extra is not None and self._last_extra is not None:
                    self.extra_figs[attr].append(self._last_extra[s.positions])

    def causality(self, shape: Shape) -> Check:
        """Changing tokens from position p on leaves the logits before p unchanged (at the compared
        positions; the unchanged run is the sample's own figure)."""
        sample = shape.samples[0]
        tokens = self._decode_tokens(sample)
        n = tokens.shape[1] if self.fn.role != "prefill" else sample.n
        p = max(1, n // 2)
        changed = (sample.ids if self.fn.role == "prefill" else tokens).copy()
        changed[0, p: n] = (changed[0, p: n] + 1 - 9) % (self.vocab - 9) + 9
        before = sample.positions < p
        a = shape.fig.interp[0][before]
        b = self._run(changed)[sample.positions[before]]
        rel = float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12))
        ok = rel <= CAUSAL_TOL
        return Check("causality", ok, "changing tokens after position p leaves logits up to p unchanged" if ok else
                     f"not causal: changing tokens after position {p} changed the logits before it by {rel:.3g} "
                     f"(relative; tolerance {CAUSAL_TOL:g})", rel)

    def prefill_then_decode(self, shape: Shape) -> Check:
        """Prefill n real tokens (right-padded to the function's length), then `steps` decode
        steps at positions n.. must give the logits of one full forward over n + steps tokens."""
        sample, extra = shape.samples[1], shape.extra
        n, steps, length = sample.n, len(shape.extra), shape.length
        _, states = self._prefill(sample.ids)
        dec = self._decode(extra, n, states)
        if shape.full_torch is None:
            padded = np.full((1, length), PAD_ID, np.int32)
            padded[0, :n], padded[0, n: n + steps] = sample.ids[0, :n], extra
            full = self._prefill(padded)[0][n: n + steps]
            against = "the interpreter's full-sequence prefill"
        else:
            full, against = shape.full_torch, "torch's full-sequence logits (package weights)"
        db = float(snr_db(full, dec))
        ok = db >= DECODE_SNR_DB
        return Check("prefill_then_decode", ok, f"prefill + {steps} decode steps match {against} ({db:.1f} dB)" if ok else
                     f"prefill + {steps} decode steps differ from {against}: {db:.1f} dB < {DECODE_SNR_DB:g} dB "
                     "(does the decode function read its cache?)", db)


def coreml_not_run() -> dict[str, str] | None:
    if platform.system() != "Darwin":
        return {"not_run": "needs macOS: CoreML cannot run predictions on this machine"}
    return None


__all__ = ["Parity", "Check", "Sample", "UnsupportedOp", "package_state_dict", "package_weights", "positions_of",
           "snr_db", "summarize", "top1", "weights_check", "_samples", "coreml_not_run", "weight_root"]


def _coreml_snr(package: Path, fn: FunctionP, samples: list[Sample], expected: list[np.ndarray]) -> dict[str, Any]:
    """On macOS: run the package with CoreML on the golden inputs (not exercised on Linux CI)."""
    import coremltools as ct

    model = ct.models.MLModel(str(package), function_name=fn.name)
    got = []
    for s in samples:
        state = model.make_state() if fn.states else None
        out = model.predict({"input_ids": s.ids}, state=state) if state is not None else model.predict({"input_ids": s.ids})
        got.append(np.asarray(out["logits"], dtype=np.float32)[0][s.positions])
    return {"value": snr_db(np.concatenate(expected), np.concatenate(got)), "n": len(samples)}


def measure(package: Path, fn: FunctionP, checkpoint: Path, *, samples: int, decode_steps: int, seed: int,
            lengths: list[int] | None = None, positions: int | None = None,
            cache_mb: float = CONST_CACHE_MB) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(report, golden arrays) for one function; the report's `checks` say pass/fail by name.

    `lengths`: the enumerated lengths of a prefill function to run (None: all of them);
    `positions`: logits compared per sample (None: every real position); `cache_mb`: constants
    the interpreter keeps between runs. Peak memory: one fp32 torch model, or one interpreter's
    live values plus `cache_mb`, plus the kept logits (samples x positions x vocab)."""
    import gc

    import torch

    from runtime.model.checkpoint import load_student

    report: dict[str, Any] = {"function": fn.name, "role": fn.role}
    if fn.role == "verify":  # whole calls: the decode steps rounded up to the verify length
        decode_steps = -(-decode_steps // fn.seq_lens[0]) * fn.seq_lens[0]
    parity = Parity(package, fn, 0, decode_steps, cache_mb)
    missing_ops = parity.unsupported()
    if missing_ops:
        check = Check("interpreter_covers_every_op", False, f"the reference interpreter does not implement {missing_ops}: "
                      "the package cannot be checked, so the parity gates cannot pass")
        return {**report, "checks": [check.as_json()], "passed": False, "metrics": {}}, {}
    checks = [Check("interpreter_covers_every_op", True, "every op is implemented")]

    model = load_student(Path(checkpoint)).eval()
    parity.vocab = vocab = model.arch.vocab_size
    run_lengths = [int(n) for n in fn.seq_lens if lengths is None or int(n) in lengths] if fn.role == "prefill" \
        else [decode_steps]
    shapes = []
    for length in run_lengths:
        shape = Shape(length, _samples(length, samples, vocab, seed + length, 9, decode_steps, positions))
        if fn.role != "prefill":  # every sample decodes `decode_steps` tokens, its padding included
            for s in shape.samples:
                s.positions = positions_of(decode_steps, positions)
        if fn.role == "prefill" and len(shape.samples) > 1:
            shape.extra = [int(t) for t in np.random.default_rng(shape.samples[1].n).integers(9, vocab, size=decode_steps)]
        shapes.append(shape)

    # torch: the checkpoint, then the package's weights written into the same model
    parity.torch_figures(model, shapes, "ckpt")
    params = dict(model.state_dict())  # views of the model's tensors: writing them writes the model

    def into_model(stream: Iterator[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
        """Hands each package weight to the check, then (once compared) writes it into the model."""
        for name, value in stream:
            yield name, value
            if name in params and tuple(value.shape) == tuple(params[name].shape):
                with torch.no_grad():
                    params[name].copy_(torch.from_numpy(value))

    checks.append(weights_check(into_model(package_weights(package, list(params))), params))
    parity.torch_figures(model, shapes, "ref")
    parity.torch_continuations(model, shapes)
    del model, params
    gc.collect()

    try:
        parity.open(fp16=False)
        parity.interp_figures(shapes, "interp")
        for shape in shapes:
            shape.checks.append(parity.causality(shape))
            if fn.role == "prefill" and parity.has_decode and len(shape.samples) > 1:
                shape.checks.append(parity.prefill_then_decode(shape))
        parity.open(fp16=True)
        parity.interp_figures(shapes, "fp16")
    except (ValueError, ProgramError) as exc:  # the package's function does not take what the contract says
        checks.append(Check("interpreter_runs_the_function", False, f"the interpreter could not run {fn.name!r} with the "
                            f"contract's inputs: {exc}"))
        return {**report, "checks": [c.as_json() for c in checks], "passed": False, "metrics": {}}, {}
    finally:
        parity.close()
    return _report(package, fn, parity, shapes, report, checks)


def _report(package: Path, fn: FunctionP, parity: Parity, shapes: list[Shape], report: dict[str, Any],
            checks: list[Check]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    golden: dict[str, np.ndarray] = {}
    by_shape: dict[str, dict[str, float]] = {}
    all_samples: list[Sample] = []
    for shape in shapes:
        tag = f"[length {shape.length}]" if len(shapes) > 1 or len(fn.seq_lens) > 1 else ""
        for c in shape.checks:
            c.name += tag
        checks += shape.checks
        fig = shape.fig
        for j, s in enumerate(shape.samples):
            i = len(all_samples)
            golden[f"sample{i}_input_ids"] = s.ids
            golden[f"sample{i}_n"] = np.array(s.n)
            golden[f"sample{i}_positions"] = s.positions
            golden[f"sample{i}_interpreter_logits"] = fig.interp[j]
            golden[f"sample{i}_interpreter_fp16_logits"] = fig.fp16[j]
            golden[f"sample{i}_torch_logits"] = fig.ref[j]
            all_samples.append(s)
        by_shape[str(shape.length)] = summarize(fig)
    checks.append(Check("no_nonfinite_intermediates", not parity.nonfinite,
                        "no op produced inf or NaN in fp16 emulation" if not parity.nonfinite else
                        f"{len(parity.nonfinite)} op(s) produced inf/NaN in fp16 emulation, first: {parity.nonfinite[:5]}",
                        float(len(parity.nonfinite))))
    positions = int(sum(f["positions"] for f in by_shape.values()))
    worst = {k: min(f[k] for f in by_shape.values()) for k in next(iter(by_shape.values())) if k != "positions"}
    coreml = coreml_not_run()
    if coreml is None and fn.role == "prefill":
        coreml = _coreml_snr(package, fn, all_samples, [x for shape in shapes for x in shape.fig.fp16])
    metrics: dict[str, Any] = {k: {"value": v, "n": positions} for k, v in worst.items()}
    metrics["nonfinite_intermediates"] = {"value": len(parity.nonfinite), "n": len(all_samples)}
    metrics["coreml_snr_db"] = coreml or {"not_run": "CoreML prediction of the decode function is checked through its prefill"}
    for name in ("causality", "prefill_then_decode"):  # worst over shapes: max change, min dB
        values = [c.value for c in checks if c.name.startswith(name) and c.value is not None]
        if values:
            metrics[name] = {"value": max(values) if name == "causality" else min(values), "n": len(values)}
    if parity.extra is not None and parity.extra_figs["interp"]:
        metrics.update(head_metrics(parity.extra, parity.extra_figs))
        for i, (ref, interp) in enumerate(zip(parity.extra_figs["ref"], parity.extra_figs["interp"])):
            golden[f"sample{i}_torch_{parity.extra}"], golden[f"sample{i}_interpreter_{parity.extra}"] = ref, interp
    skipped = [int(n) for n in fn.seq_lens if str(int(n)) not in by_shape] if fn.role == "prefill" else []
    return {**report, "checks": [c.as_json() for c in checks], "passed": all(c.passed for c in checks),
            "metrics": metrics, "by_shape": by_shape, "lengths_not_run": skipped,
            "samples": [{"length": int(s.ids.shape[1]), "real_tokens": s.n, "positions": int(s.positions.size)}
                        for s in all_samples],
            "nonfinite": parity.nonfinite[:50]}, golden
