"""Conformance cases written from coremltools' documented op definitions: for the ops the
interpreter registers that coremltools' own op tests never exercise as a runtime op, and for an
op form the harvest (newest opset first) does not reach: an iOS16 `constexpr_cast`, whose
parameters coremltools writes as attributes.

Each expected value is written out from the docstring of the op's class in
`coremltools/converters/mil/mil/ops/defs/iOS15/` (the definitions iOS16-18 inherit), not computed
with the numpy function the interpreter uses. `tests.verify.mil_conformance` converts and runs them
exactly like the harvested cases.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .mil_conformance import Case

IOS18 = 9  # ct.target.iOS18

T, F = True, False


def _unary(op: str, x: np.ndarray, expected: np.ndarray, note: str, dtype: Any = None) -> Case:
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    dtype = dtype or types.fp32
    return Case(id=f"definition::{op}[{note}]", source="definition", opset=IOS18,
                placeholders={"x": mb.placeholder(shape=x.shape, dtype=dtype)},
                build=lambda x: getattr(mb, op)(x=x), inputs={"x": x}, expected=[expected])


def _logical(op: str, x: np.ndarray, y: np.ndarray, expected: np.ndarray, note: str) -> Case:
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    return Case(id=f"definition::{op}[{note}]", source="definition", opset=IOS18,
                placeholders={"x": mb.placeholder(shape=x.shape, dtype=types.bool),
                              "y": mb.placeholder(shape=y.shape, dtype=types.bool)},
                build=lambda x, y: getattr(mb, op)(x=x, y=y), inputs={"x": x, "y": y}, expected=[expected])


def _constexpr_cast_ios17() -> Case:
    """iOS16 constexpr_cast: `output = constexpr_cast(source_val, output_dtype="fp32")`, SrcT fp16,
    DstT fp32; at opset iOS17 coremltools writes source_val and output_dtype as attributes."""
    from coremltools.converters.mil.mil import Builder as mb

    source = np.array([[0.5, -2.0, 65504.0], [1e-3, 3.140625, -0.0]], np.float16)

    def build(x: Any) -> Any:
        return mb.add(x=x, y=mb.constexpr_cast(source_val=source, output_dtype="fp32"))

    x = np.ones((2, 3), np.float32)
    return Case(id="definition::constexpr_cast[iOS17, attributes]", source="definition", opset=8,
                placeholders={"x": mb.placeholder(shape=(2, 3))}, build=build, inputs={"x": x},
                expected=[np.array([[1.5, -1.0, 65505.0], [1.0010004043579102, 4.140625, 1.0]], np.float32)])


def definition_cases() -> list[Case]:
    """Cases for ceil, logical_not, logical_and, logical_or, logical_xor, and an iOS17 constexpr_cast."""
    from coremltools.converters.mil.mil import types

    x = np.array([[True, False, True], [False, False, True]])
    a = np.array([[T, T, F, F], [T, F, T, F]])
    b = np.array([[T, F, T, F], [T, T, T, T]])
    row = np.array([T, F, T, F])  # broadcast against (2, 4)
    return [
        # ceil: "the ceil values of the input x, element-wise", T: fp16, fp32
        _unary("ceil", np.array([[-1.2, 2.0, -3.4], [4.5, -5.0, 6.7]], np.float32),
               np.array([[-1.0, 2.0, -3.0], [5.0, -5.0, 7.0]], np.float32), "mixed signs"),
        _unary("ceil", np.array([-0.5, 0.5, 0.0, 1e-3, -1e-3, 2047.5], np.float32),
               np.array([-0.0, 1.0, 0.0, 1.0, -0.0, 2048.0], np.float32), "around integers"),
        # logical_not: "the value of NOT the input x, element-wise", x: tensor<[*d], bool>
        _unary("logical_not", x, np.array([[False, True, False], [True, True, False]]), "2x3", dtype=types.bool),
        # logical_and / or / xor: "the truth value of x AND / OR / XOR y element-wise with broadcasting"
        _logical("logical_and", a, b, np.array([[T, F, F, F], [T, F, T, F]]), "same shape"),
        _logical("logical_or", a, b, np.array([[T, T, T, F], [T, T, T, T]]), "same shape"),
        _logical("logical_xor", a, b, np.array([[F, T, T, F], [F, T, F, T]]), "same shape"),
        _logical("logical_and", a, row, np.array([[T, F, F, F], [T, F, T, F]]), "broadcast (2,4) with (4,)"),
        _logical("logical_or", a, row, np.array([[T, T, T, F], [T, F, T, F]]), "broadcast (2,4) with (4,)"),
        _logical("logical_xor", a, row, np.array([[F, T, T, F], [F, F, F, F]]), "broadcast (2,4) with (4,)"),
        _constexpr_cast_ios17(),
    ]
