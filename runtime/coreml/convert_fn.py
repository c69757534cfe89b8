"""`ct.convert` of one exported program into an ML program with the contract's IO and precision."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np
from torch.export import ExportedProgram

from compiler.planning.params import FunctionP, PrecisionP, TensorP

from .scopes import PrecisionSelector, tag_modules

TARGETS = {"macOS15": ct.target.macOS15, "iOS18": ct.target.iOS18}
COMPUTE_UNITS = {"all": ct.ComputeUnit.ALL, "cpu_only": ct.ComputeUnit.CPU_ONLY,
                 "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE}
NP_DTYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32}


class ConversionError(RuntimeError):
    """The program cannot be converted as the contract and plan say; the message names the function."""


def _np_dtype(fn: FunctionP, t: TensorP) -> Any:
    if t.dtype not in NP_DTYPES:
        raise ConversionError(f"function {fn.name!r}: tensor {t.name!r} has dtype {t.dtype!r}, which CoreML IO cannot carry")
    return NP_DTYPES[t.dtype]


def input_types(fn: FunctionP) -> list[ct.TensorType]:
    out = []
    for t in fn.inputs:
        if t.enumerated_shapes:
            shape: Any = ct.EnumeratedShapes(shapes=[list(s) for s in t.enumerated_shapes], default=list(t.enumerated_shapes[0]))
        else:
            shape = [int(d) for d in t.shape]
        out.append(ct.TensorType(name=t.name, shape=shape, dtype=_np_dtype(fn, t)))
    return out


def output_types(fn: FunctionP) -> list[ct.TensorType]:
    return [ct.TensorType(name=t.name, dtype=_np_dtype(fn, t)) for t in fn.outputs]


def state_types(fn: FunctionP) -> list[ct.StateType]:
    out = []
    for t in fn.states:
        if t.dtype != "fp16":
            raise ConversionError(f"function {fn.name!r}: state {t.name!r} is {t.dtype}; CoreML states are fp16 only "
                                  "(set quantization.kv_cache: fp16 or export.coreml.decode_cache: explicit)")
        out.append(ct.StateType(wrapped_type=ct.TensorType(shape=[int(d) for d in t.shape], dtype=np.float16), name=t.name))
    return out


def check_names(fn: FunctionP) -> None:
    """CoreML forbids a name that is both an input and an output of a function."""
    shared = sorted({t.name for t in fn.inputs} & {t.name for t in fn.outputs})
    if shared:
        raise ConversionError(f"function {fn.name!r}: contracts/io.json names {shared} both as inputs and as outputs, "
                              "which CoreML does not allow; the contract (compiler/planning/interface.py) must give the updated "
                              "cache outputs their own names")


def convert_function(ep: ExportedProgram, fn: FunctionP, precision: PrecisionP, target: str,
                     compute_units: str) -> tuple[ct.models.MLModel, PrecisionSelector]:
    """An ML program for `fn` (not loaded: Linux cannot compile models) and its precision decisions."""
    check_names(fn)
    selector = PrecisionSelector(tag_modules(ep), list(precision.island_modules), list(precision.island_ops))
    if precision.compute == "fp16":
        compute_precision: Any = ct.transform.FP16ComputePrecision(op_selector=selector)
    elif precision.compute == "fp32":
        compute_precision = ct.precision.FLOAT32
    else:
        raise ConversionError(f"precision.compute {precision.compute!r} is not a CoreML compute precision")
    model = ct.convert(
        ep, convert_to="mlprogram", minimum_deployment_target=TARGETS[target], compute_units=COMPUTE_UNITS[compute_units],
        inputs=input_types(fn), outputs=output_types(fn), states=state_types(fn) or None,
        compute_precision=compute_precision, skip_model_load=True,
    )
    return model, selector
