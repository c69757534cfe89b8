"""The parity job's figures of merit: SNR and top-1 agreement of a function's outputs against a reference,
summarised per shape (the logits) and for a head's output beside them (a judge's verdicts, the halt logits).
Pure numpy; runtime/verify/parity.py gathers the figures."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def summarize(fig: Any) -> dict[str, float]:
    """One shape's logits figures (runtime/verify/parity.Figures): package vs torch, vs the checkpoint, in fp16."""
    cat = {k: np.concatenate(getattr(fig, k)) for k in ("ref", "ckpt", "interp", "fp16")}
    return {k: float(v) for k, v in {
        "snr_db": snr_db(cat["ref"], cat["interp"]), "top1_agreement": top1(cat["ref"], cat["interp"]),
        "quant_snr_db": snr_db(cat["ckpt"], cat["interp"]), "quant_top1_agreement": top1(cat["ckpt"], cat["interp"]),
        "fp16_snr_db": snr_db(cat["ref"], cat["fp16"]), "fp16_top1_agreement": top1(cat["ref"], cat["fp16"]),
        "positions": int(cat["ref"].shape[0]),
    }.items()}


def head_metrics(name: str, figs: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """A head's output (`judge` or `halt`), package against torch: SNR (the package's weights; the fp16 emulation)
    and the share of outputs whose sign (a verdict, a clause flag, a stop at probability 0.5) the fp16 package keeps
    from the checkpoint."""
    whole = {k: np.concatenate([x.reshape(-1) for x in v]) for k, v in figs.items() if v}
    n = int(whole["ref"].size)
    return {f"{name}_snr_db": {"value": snr_db(whole["ref"], whole["interp"]), "n": n},
            f"{name}_fp16_snr_db": {"value": snr_db(whole["ref"], whole["fp16"]), "n": n},
            f"{name}_sign_agreement": {"value": float(np.mean((whole["ckpt"] > 0) == (whole["fp16"] > 0))), "n": n}}
