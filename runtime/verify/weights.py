"""The package's weights against the checkpoint's: streamed one module at a time from the package's
memory-mapped weight file (dequantized when compressed), so a 1B package's weights are never all in
memory together, and compared by name with the checkpoint's (`weights_match_checkpoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .checks import Check
from .interp import Interpreter, constants
from .observe import _Package, observe, weight_root

WEIGHT_TOL = 0.05  # max |package - checkpoint| / max |checkpoint| per module (requantization of QAT weights)


def package_weights(package: Path, params: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(parameter name, float32 value as stored in the package, dequantized when compressed), one
    at a time: a module's weight is read from the memory-mapped weight file, dequantized, handed
    over and dropped, so the package's weights are never all in memory together.

    `.weight` parameters come through the observed contract's compressed and dense weights; the
    others (q/k/v biases: dense, often inline) through the consts whose name roots match."""
    from .observe import PARAM_PREFIX

    modules = [p.removesuffix(".weight") for p in params if p.endswith(".weight")]
    others = {PARAM_PREFIX + n.replace(".", "_"): n for n in params if not n.endswith(".weight")}
    obs = observe(package, modules)
    seen: set[str] = set()
    pkg = _Package(package)
    for fo in obs["functions"].values():  # dense weights: straight from the blob file
        for d in fo["dense"]:
            key = (d["module"] or "") + ".weight"
            if d["module"] and key not in seen and d["blob"]:
                blobs = pkg.blob_file(d["blob"]["file"])
                if blobs is not None:
                    seen.add(key)
                    yield key, np.asarray(blobs.read(d["blob"]["offset"], d["dtype"], d["shape"]), dtype=np.float32)
    for blobs in pkg.files.values():
        if blobs is not None:
            blobs.close()
    interp = Interpreter(package, cache_mb=0)
    try:
        for fname, fo in obs["functions"].items():
            wanted = {c["name"]: c["module"] + ".weight" for c in fo["compressed"]
                      if c["module"] and c["module"] + ".weight" not in seen}
            fn = interp.function(fname)
            for op in fn.ops:
                if op.type == "const" and op.outputs and weight_root(op.outputs[0].name) in others:
                    name = others[weight_root(op.outputs[0].name)]
                    if name not in seen:
                        wanted.setdefault(op.outputs[0].name, name)
            for out_name, value in constants(interp, fname, set(wanted)):
                key = wanted[out_name]
                if key not in seen:
                    seen.add(key)
                    yield key, value
    finally:
        interp.close()


def package_state_dict(package: Path, params: list[str]) -> dict[str, np.ndarray]:
    """Parameter name -> float32 value as stored in the package, all at once (small packages, tests)."""
    return dict(package_weights(package, params))


def weights_check(pkg_weights: Iterable[tuple[str, np.ndarray]], ckpt: dict[str, Any]) -> Check:
    """Each package weight (streamed) against the checkpoint's (numpy or torch, by name)."""
    bad, worst, found = [], 0.0, set()
    for name, got in pkg_weights:
        if name not in ckpt:
            continue
        found.add(name)
        want = _np(ckpt[name])
        if got.shape != want.shape:
            bad.append(f"{name} shape {list(got.shape)} != checkpoint {list(want.shape)}")
            continue
        rel = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
        worst = max(worst, rel)
        if rel > WEIGHT_TOL:
            bad.append(f"{name} differs from the checkpoint (max relative error {rel:.3g})")
    missing = sorted(set(ckpt) - found)
    if missing:
        bad.append(f"weights not found in the package: {missing}")
    return Check("weights_match_checkpoint", not bad, "; ".join(sorted(bad)) if bad else
                 f"every weight matches the checkpoint (max relative error {worst:.3g}, tolerance {WEIGHT_TOL:g})", worst)


def _np(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.detach().float().numpy()
