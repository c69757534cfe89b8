"""Where `modelspec bench-device` runs a package: CoreML on a Mac, or the reference interpreter.

`CoreMLBackend` loads each function of the package with the spec's compute units and shares one
``MLState`` (the KV cache) between the prefill and decode functions of a request; with
``decode_cache: explicit`` the caches are passed in and out instead. It is written
against the documented coremltools API (``MLModel(path, compute_units=, function_name=)``,
``make_state()``, ``predict(inputs, state=)``) and cannot run on Linux, where CoreML has no
predictions: it is untested on this project's CI (docs/speed.md says so). `InterpreterBackend`
runs the same calls with the reference interpreter (runtime/verify/interp.py): its timings are not
a device's, and a report it writes is refused by every speed gate, but it runs the whole harness.
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

COMPUTE_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE"}


class BackendError(RuntimeError):
    pass


def _grow(cache: np.ndarray, length: int) -> np.ndarray:
    """A prefill's present keys or values [layers, batch, kv heads, L, d_head] as a decode cache of `length`."""
    out = np.zeros(cache.shape[:3] + (length,) + cache.shape[4:], dtype=cache.dtype)
    n = min(cache.shape[3], length)
    out[:, :, :, :n] = cache[:, :, :, :n]
    return out


class _Runner:
    """One request's calls: the KV cache in CoreML states (`cache="state"`), or passed in and out
    explicitly (`"explicit"`: the prefill's present keys and values grown to the decode cache), or
    none (a prefill-only package)."""

    name = ""
    load_s = 0.0
    compute_units = ""

    def __init__(self, cache: str | None, cache_len: int):
        self.cache, self.cache_len = cache, cache_len
        self.last_halt: float | None = None  # the halt output of the last decode, where the package has one

    def _make_state(self) -> Any:
        return None

    def _predict(self, function: str, inputs: dict[str, np.ndarray], state: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def new_state(self) -> dict[str, Any]:
        return {"states": self._make_state() if self.cache == "state" else None, "caches": None}

    def prefill(self, function: str, ids: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        out = self._predict(function, {"input_ids": ids}, state)
        if self.cache == "explicit":
            state["caches"] = tuple(_grow(np.asarray(out[n]), self.cache_len) for n in ("present_keys", "present_values"))
        return np.asarray(out["logits"], dtype=np.float32)[0]

    def decode(self, token: int, position: int, state: dict[str, Any]) -> np.ndarray:
        inputs = {"input_ids": np.array([[token]], np.int32), "position": np.array([position], np.int32)}
        if self.cache == "explicit":
            inputs["key_cache"], inputs["value_cache"] = state["caches"]
        out = self._predict("decode", inputs, state)
        self.last_halt = float(np.asarray(out["halt"]).reshape(-1)[0]) if "halt" in out else None
        if self.cache == "explicit":
            state["caches"] = (np.asarray(out["present_keys"]), np.asarray(out["present_values"]))
        return np.asarray(out["logits"], dtype=np.float32)[0, 0]

    def verify(self, tokens: list[int], position: int, state: dict[str, Any]) -> np.ndarray:
        """The worker's `verify`: tokens at `position`.. in one call -> logits [len(tokens), V]."""
        inputs = {"input_ids": np.array([tokens], np.int32), "position": np.array([position], np.int32)}
        if self.cache == "explicit":
            inputs["key_cache"], inputs["value_cache"] = state["caches"]
        out = self._predict("verify", inputs, state)
        if self.cache == "explicit":
            state["caches"] = (np.asarray(out["present_keys"]), np.asarray(out["present_values"]))
        return np.asarray(out["logits"], dtype=np.float32)[0]

    def close(self) -> None:
        pass


class CoreMLBackend(_Runner):
    name = "coreml"

    def __init__(self, package: Path, functions: list[str], compute_units: str, cache: str | None, cache_len: int):
        super().__init__(cache, cache_len)
        if platform.system() != "Darwin":
            raise BackendError("CoreML runs predictions on macOS only; `--backend interpreter` runs the harness with "
                               "the reference interpreter (not a device measurement: speed gates refuse its report)")
        import coremltools as ct

        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
        start = time.perf_counter()
        self.models = {f: ct.models.MLModel(str(package), compute_units=units, function_name=f) for f in functions}
        self.load_s = time.perf_counter() - start
        self.compute_units = compute_units

    def _make_state(self) -> Any:
        return self.models["decode"].make_state()  # one MLState serves every function of the package

    def _predict(self, function: str, inputs: dict[str, np.ndarray], state: dict[str, Any]) -> dict[str, Any]:
        model = self.models[function]
        return model.predict(inputs, state=state["states"]) if state["states"] is not None else model.predict(inputs)

    @staticmethod
    def device() -> dict[str, str]:
        chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              check=False).stdout.strip()
        return {"chip": chip or platform.machine(), "os": f"macOS {platform.mac_ver()[0]}"}


class InterpreterBackend(_Runner):
    name = "reference-interpreter"

    def __init__(self, package: Path, functions: list[str], compute_units: str, cache: str | None, cache_len: int):
        super().__init__(cache, cache_len)
        from runtime.verify.interp import Interpreter

        start = time.perf_counter()
        self.interp = Interpreter(package)
        missing = sorted({op for f in functions for op in self.interp.unsupported_ops(f)})
        if missing:
            raise BackendError(f"the reference interpreter does not implement {missing}")
        self.load_s = time.perf_counter() - start
        self.compute_units = "cpu (reference interpreter)"

    def _predict(self, function: str, inputs: dict[str, np.ndarray], state: dict[str, Any]) -> dict[str, Any]:
        r = self.interp.run(function, inputs, state["states"])
        if self.cache == "state":
            state["states"] = r.states
        return r.outputs

    @staticmethod
    def device() -> dict[str, str]:
        return {"chip": platform.processor() or platform.machine(), "os": f"{platform.system()} {platform.release()}"}

    def close(self) -> None:
        self.interp.close()


BACKENDS = {"coreml": CoreMLBackend, "interpreter": InterpreterBackend}
