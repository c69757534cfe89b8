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
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.planning.params import FunctionP

from .interp import Interpreter, UnsupportedOp, dequantized_weights
from .program import ProgramError
from .observe import _Package, observe, weight_root

CAUSAL_TOL = 1e-4  # max |Δlogit| / max |logit| at positions before the change (fp32 reference mode)
# prefill+decode vs full sequence, both in the interpreter's fp32 reference mode: equal up to
# round-off (>100 dB on the toy); a decode that ignores its cache lands below 10 dB
DECODE_SNR_DB = 40.0
WEIGHT_TOL = 0.05  # max |package - checkpoint| / max |checkpoint| per module (requantization of QAT weights)
PAD_ID = 0
SNR_CAP_DB = 200.0  # identical outputs (keeps reports valid JSON)


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """SNR of x against ref; a non-finite value anywhere in either is no signal at all (-200 dB)."""
    if not (np.isfinite(ref).all() and np.isfinite(x).all()):
        return -SNR_CAP_DB
    ref = ref.astype(np.float64)
    noise = float(((ref - x.astype(np.float64)) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return SNR_CAP_DB
    return min(SNR_CAP_DB, 10.0 * np.log10(signal / noise)) if signal > 0 else -SNR_CAP_DB


def top1(ref: np.ndarray, x: np.ndarray) -> float:
    return float((ref.argmax(-1) == x.argmax(-1)).mean())


def _other_params(package: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Parameters that are not a module's `.weight` (q/k/v biases): always dense, often small enough
    that coremltools stores them inline, so they are read through the interpreter's consts."""
    from .interp import Interpreter
    from .observe import PARAM_PREFIX

    wanted = {PARAM_PREFIX + n.replace(".", "_"): n for n in names}
    out: dict[str, np.ndarray] = {}
    interp = Interpreter(package)
    try:
        for fname in interp.functions:
            fn = interp.function(fname)
            env: dict[str, Any] = {}
            for index, op in enumerate(fn.ops):
                if op.type != "const" or not op.outputs or weight_root(op.outputs[0].name) not in wanted:
                    continue
                name = wanted[weight_root(op.outputs[0].name)]
                for value, _ in interp._const(fn, index, op, env):
                    out.setdefault(name, np.asarray(value, dtype=np.float32))
    finally:
        interp.close()
    return out


def package_state_dict(package: Path, params: list[str]) -> dict[str, np.ndarray]:
    """Parameter name -> float32 value as stored in the package (dequantized when compressed)."""
    others = [p for p in params if not p.endswith(".weight")]
    modules = [p.removesuffix(".weight") for p in params if p.endswith(".weight")]
    obs = observe(package, modules)
    deq = dequantized_weights(package)
    pkg = _Package(package)
    out: dict[str, np.ndarray] = {}
    for fo in obs["functions"].values():
        for c in fo["compressed"]:
            if c["module"] and c["module"] + ".weight" not in out and c["name"] in deq:
                out[c["module"] + ".weight"] = np.asarray(deq[c["name"]], dtype=np.float32)
        for d in fo["dense"]:
            key = (d["module"] or "") + ".weight"
            if d["module"] and key not in out and d["blob"]:
                blobs = pkg.blob_file(d["blob"]["file"])
                if blobs is not None:
                    out[key] = np.asarray(blobs.read(d["blob"]["offset"], d["dtype"], d["shape"]), dtype=np.float32)
    if others:
        out.update(_other_params(package, others))
    return out


@dataclass
class Check:
    name: str
    passed: bool
    message: str
    value: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "value": self.value}


@dataclass
class Sample:
    ids: np.ndarray  # [1, L] int32, right-padded
    n: int  # real tokens


@dataclass
class Figures:
    ref: list[np.ndarray] = field(default_factory=list)  # torch, package weights
    ckpt: list[np.ndarray] = field(default_factory=list)  # torch, checkpoint
    interp: list[np.ndarray] = field(default_factory=list)
    fp16: list[np.ndarray] = field(default_factory=list)


def _samples(length: int, count: int, vocab: int, seed: int, first_token: int, decode_steps: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    lengths = [length, max(1, length - decode_steps), max(1, (3 * length) // 4), max(1, length // 2)]
    out = []
    for i in range(count):
        n = lengths[i % len(lengths)]
        ids = np.full((1, length), PAD_ID, dtype=np.int32)
        ids[0, :n] = rng.integers(first_token, vocab, size=n)
        out.append(Sample(ids, n))
    return out


class Parity:
    """Runs the comparisons for one function of one package against torch models."""

    def __init__(self, package: Path, fn: FunctionP, student_pkg: Any, student_ckpt: Any, vocab: int):
        self.package, self.fn = Path(package), fn
        self.ref_interp = Interpreter(self.package, fp16=False)
        self.fp16_interp = Interpreter(self.package, fp16=True)
        self.student_pkg, self.student_ckpt, self.vocab = student_pkg, student_ckpt, vocab
        self.checks: list[Check] = []
        self.nonfinite: list[str] = []

    def _torch(self, model: Any, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return model(torch.from_numpy(ids.astype(np.int64))).float().numpy()[0]

    def _call(self, interp: Interpreter, function: str, inputs: dict[str, np.ndarray], states: dict | None) -> Any:
        result = interp.run(function, inputs, states)
        if interp is self.fp16_interp:
            self.nonfinite += [f"{function}:{n}" for n in result.nonfinite if f"{function}:{n}" not in self.nonfinite]
        return result

    def _prefill(self, interp: Interpreter, ids: np.ndarray, function: str | None = None) -> tuple[np.ndarray, dict]:
        r = self._call(interp, function or self.fn.name, {"input_ids": ids}, None)
        return np.asarray(r.outputs["logits"], dtype=np.float32)[0], r.states

    def _decode(self, interp: Interpreter, tokens: list[int], start: int, states: dict | None) -> np.ndarray:
        out = []
        for i, tok in enumerate(tokens):
            r = self._call(interp, "decode", {"input_ids": np.array([[tok]], np.int32),
                                              "position": np.array([start + i], np.int32)}, states)
            states = r.states
            out.append(np.asarray(r.outputs["logits"], dtype=np.float32)[0, 0])
        return np.stack(out)

    def unsupported(self) -> list[str]:
        names = [self.fn.name] + (["decode"] if "decode" in self.ref_interp.functions and self.fn.role == "prefill" else [])
        return sorted({op for f in names for op in self.ref_interp.unsupported_ops(f)})

    def prefill_figures(self, samples: list[Sample]) -> Figures:
        fig = Figures()
        for s in samples:
            fig.interp.append(self._prefill(self.ref_interp, s.ids)[0][: s.n])
            fig.fp16.append(self._prefill(self.fp16_interp, s.ids)[0][: s.n])
            fig.ref.append(self._torch(self.student_pkg, s.ids[:, : s.n]))
            fig.ckpt.append(self._torch(self.student_ckpt, s.ids[:, : s.n]))
        return fig

    def decode_figures(self, samples: list[Sample], steps: int) -> Figures:
        fig = Figures()
        for s in samples:
            tokens = [int(t) for t in s.ids[0, :steps]]
            fig.interp.append(self._decode(self.ref_interp, tokens, 0, None))
            fig.fp16.append(self._decode(self.fp16_interp, tokens, 0, None))
            ids = np.array([tokens], np.int32)
            fig.ref.append(self._torch(self.student_pkg, ids))
            fig.ckpt.append(self._torch(self.student_ckpt, ids))
        return fig

    def causality(self, sample: Sample) -> Check:
        p = max(1, sample.n // 2)
        changed = sample.ids.copy()
        changed[0, p: sample.n] = (changed[0, p: sample.n] + 1 - 9) % (self.vocab - 9) + 9
        if self.fn.role == "decode":
            tokens = [int(t) for t in sample.ids[0, : sample.n]]
            a = self._decode(self.ref_interp, tokens, 0, None)[:p]
            b = self._decode(self.ref_interp, [int(t) for t in changed[0, : sample.n]], 0, None)[:p]
        else:
            a = self._prefill(self.ref_interp, sample.ids)[0][:p]
            b = self._prefill(self.ref_interp, changed)[0][:p]
        rel = float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12))
        ok = rel <= CAUSAL_TOL
        return Check("causality", ok, "changing tokens after position p leaves logits up to p unchanged" if ok else
                     f"not causal: changing tokens after position {p} changed the logits before it by {rel:.3g} "
                     f"(relative; tolerance {CAUSAL_TOL:g})", rel)

    def prefill_then_decode(self, sample: Sample, steps: int) -> Check:
        """Prefill n real tokens (right-padded to the function's length), then `steps` decode
        steps at positions n.. must give the logits of one full forward over n + steps tokens."""
        n = sample.n
        rng = np.random.default_rng(n)
        extra = [int(t) for t in rng.integers(9, self.vocab, size=steps)]
        logits, states = self._prefill(self.ref_interp, sample.ids)
        dec = self._decode(self.ref_interp, extra, n, states)
        full_ids = np.concatenate([sample.ids[:, :n], np.array([extra], np.int32)], axis=1)
        length = int(sample.ids.shape[1])
        if full_ids.shape[1] <= length:
            padded = np.full((1, length), PAD_ID, np.int32)
            padded[:, : full_ids.shape[1]] = full_ids
            full = self._prefill(self.ref_interp, padded)[0][n: n + steps]
            against = "the interpreter's full-sequence prefill"
        else:
            full = self._torch(self.student_pkg, full_ids)[n: n + steps]
            against = "torch's full-sequence logits (package weights)"
        db = float(snr_db(full, dec))
        ok = db >= DECODE_SNR_DB
        return Check("prefill_then_decode", ok, f"prefill + {steps} decode steps match {against} ({db:.1f} dB)" if ok else
                     f"prefill + {steps} decode steps differ from {against}: {db:.1f} dB < {DECODE_SNR_DB:g} dB "
                     "(does the decode function read its cache?)", db)


def weights_check(pkg_weights: dict[str, np.ndarray], ckpt: dict[str, np.ndarray]) -> Check:
    bad, worst = [], 0.0
    missing = sorted(set(ckpt) - set(pkg_weights))
    for name, want in sorted(ckpt.items()):
        got = pkg_weights.get(name)
        if got is None:
            continue
        if got.shape != want.shape:
            bad.append(f"{name} shape {list(got.shape)} != checkpoint {list(want.shape)}")
            continue
        rel = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
        worst = max(worst, rel)
        if rel > WEIGHT_TOL:
            bad.append(f"{name} differs from the checkpoint (max relative error {rel:.3g})")
    if missing:
        bad.append(f"weights not found in the package: {missing}")
    return Check("weights_match_checkpoint", not bad, "; ".join(bad) if bad else
                 f"every weight matches the checkpoint (max relative error {worst:.3g}, tolerance {WEIGHT_TOL:g})", worst)


def summarize(fig: Figures) -> dict[str, float]:
    cat = {k: np.concatenate(getattr(fig, k)) for k in ("ref", "ckpt", "interp", "fp16")}
    return {k: float(v) for k, v in {
        "snr_db": snr_db(cat["ref"], cat["interp"]), "top1_agreement": top1(cat["ref"], cat["interp"]),
        "quant_snr_db": snr_db(cat["ckpt"], cat["interp"]), "quant_top1_agreement": top1(cat["ckpt"], cat["interp"]),
        "fp16_snr_db": snr_db(cat["ref"], cat["fp16"]), "fp16_top1_agreement": top1(cat["ref"], cat["fp16"]),
        "positions": int(cat["ref"].shape[0]),
    }.items()}


def coreml_not_run() -> dict[str, str] | None:
    if platform.system() != "Darwin":
        return {"not_run": "needs macOS: CoreML cannot run predictions on this machine"}
    return None


__all__ = ["Parity", "Check", "Sample", "UnsupportedOp", "package_state_dict", "snr_db", "summarize", "top1",
           "weights_check", "_samples", "coreml_not_run", "weight_root"]


def _coreml_snr(package: Path, fn: FunctionP, samples: list[Sample], expected: list[np.ndarray]) -> dict[str, Any]:
    """On macOS: run the package with CoreML on the golden inputs (not exercised on Linux CI)."""
    import coremltools as ct

    model = ct.models.MLModel(str(package), function_name=fn.name)
    got = []
    for s in samples:
        state = model.make_state() if fn.states else None
        out = model.predict({"input_ids": s.ids}, state=state) if state is not None else model.predict({"input_ids": s.ids})
        got.append(np.asarray(out["logits"], dtype=np.float32)[0][: s.n])
    return {"value": snr_db(np.concatenate(expected), np.concatenate(got)), "n": len(samples)}


def measure(package: Path, fn: FunctionP, checkpoint: Path, *, samples: int, decode_steps: int,
            seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(report, golden arrays) for one function; the report's `checks` say pass/fail by name."""
    import torch

    from runtime.model.checkpoint import load_student

    student_ckpt = load_student(Path(checkpoint)).eval()
    ckpt = {k: v.detach().float().numpy() for k, v in student_ckpt.state_dict().items()}
    pkg_weights = package_state_dict(package, list(ckpt))
    student_pkg = load_student(Path(checkpoint)).eval()
    with torch.no_grad():
        for name, p in student_pkg.state_dict().items():
            if name in pkg_weights and tuple(pkg_weights[name].shape) == tuple(p.shape):
                p.copy_(torch.from_numpy(pkg_weights[name]))
    vocab = student_ckpt.arch.vocab_size
    parity = Parity(package, fn, student_pkg, student_ckpt, vocab)
    report: dict[str, Any] = {"function": fn.name, "role": fn.role}
    missing_ops = parity.unsupported()
    if missing_ops:
        check = Check("interpreter_covers_every_op", False, f"the reference interpreter does not implement {missing_ops}: "
                      "the package cannot be checked, so the parity gates cannot pass")
        return {**report, "checks": [check.as_json()], "passed": False, "metrics": {}}, {}
    checks = [Check("interpreter_covers_every_op", True, "every op is implemented"), weights_check(pkg_weights, ckpt)]
    try:
        return _measure(package, fn, parity, report, checks, vocab, samples, decode_steps, seed)
    except (ValueError, ProgramError) as exc:  # the package's function does not take what the contract says
        checks.append(Check("interpreter_runs_the_function", False, f"the interpreter could not run {fn.name!r} with the "
                            f"contract's inputs: {exc}"))
        return {**report, "checks": [c.as_json() for c in checks], "passed": False, "metrics": {}}, {}


def _measure(package: Path, fn: FunctionP, parity: Parity, report: dict[str, Any], checks: list[Check], vocab: int,
             samples: int, decode_steps: int, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    # every enumerated length of a prefill function is its own shape: each gets its samples and checks
    lengths = [int(n) for n in fn.seq_lens] if fn.role == "prefill" else [decode_steps]
    golden: dict[str, np.ndarray] = {}
    by_shape: dict[str, dict[str, float]] = {}
    all_samples: list[Sample] = []
    figs: list[Figures] = []
    for length in lengths:
        tag = f"[length {length}]" if len(lengths) > 1 else ""
        sample_list = _samples(length, samples, vocab, seed + length, 9, decode_steps)
        if fn.role == "prefill":
            fig = parity.prefill_figures(sample_list)
            shape_checks = [parity.causality(sample_list[0])]
            if "decode" in parity.ref_interp.functions and len(sample_list) > 1:
                shape_checks.append(parity.prefill_then_decode(sample_list[1], decode_steps))
        else:
            fig = parity.decode_figures(sample_list, decode_steps)
            shape_checks = [parity.causality(sample_list[0])]
        for c in shape_checks:
            c.name += tag
        checks += shape_checks
        for j, s in enumerate(sample_list):
            i = len(all_samples)
            golden[f"sample{i}_input_ids"] = s.ids
            golden[f"sample{i}_n"] = np.array(s.n)
            golden[f"sample{i}_interpreter_logits"] = fig.interp[j]
            golden[f"sample{i}_interpreter_fp16_logits"] = fig.fp16[j]
            golden[f"sample{i}_torch_logits"] = fig.ref[j]
            all_samples.append(s)
        by_shape[str(length)] = summarize(fig)
        figs.append(fig)
    checks.append(Check("no_nonfinite_intermediates", not parity.nonfinite,
                        "no op produced inf or NaN in fp16 emulation" if not parity.nonfinite else
                        f"{len(parity.nonfinite)} op(s) produced inf/NaN in fp16 emulation, first: {parity.nonfinite[:5]}",
                        float(len(parity.nonfinite))))
    positions = int(sum(f["positions"] for f in by_shape.values()))
    worst = {k: min(f[k] for f in by_shape.values()) for k in next(iter(by_shape.values())) if k != "positions"}
    coreml = coreml_not_run()
    if coreml is None and fn.role == "prefill":
        coreml = _coreml_snr(package, fn, all_samples, [x for f in figs for x in f.fp16])
    metrics: dict[str, Any] = {k: {"value": v, "n": positions} for k, v in worst.items()}
    metrics["nonfinite_intermediates"] = {"value": len(parity.nonfinite), "n": len(all_samples)}
    metrics["coreml_snr_db"] = coreml or {"not_run": "CoreML prediction of the decode function is checked through its prefill"}
    for name in ("causality", "prefill_then_decode"):  # worst over shapes: max change, min dB
        values = [c.value for c in checks if c.name.startswith(name) and c.value is not None]
        if values:
            metrics[name] = {"value": max(values) if name == "causality" else min(values), "n": len(values)}
    return {**report, "checks": [c.as_json() for c in checks], "passed": all(c.passed for c in checks),
            "metrics": metrics, "by_shape": by_shape,
            "samples": [{"length": int(s.ids.shape[1]), "real_tokens": s.n} for s in all_samples],
            "nonfinite": parity.nonfinite[:50]}, golden
