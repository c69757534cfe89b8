"""MIL math ops in numpy: elementwise, activations, linear algebra, normalization, reductions
and compile-time dequantization (constexpr_*). Semantics per coremltools' op definitions."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .ops_base import OPS, Args, Op, axis_index, cast_to, f32, op


# --- elementwise -----------------------------------------------------------------------------

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum, "minimum": np.minimum,
    "floor_div": np.floor_divide, "mod": np.mod, "pow": np.power,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    OPS[_name] = (lambda fn: lambda a: fn(a["x"], a["y"]))(_fn)


@op("real_div")
def real_div(a: Args) -> np.ndarray:
    x, y = np.asarray(a["x"]), np.asarray(a["y"])
    if x.dtype.kind == "f" or y.dtype.kind == "f":
        return np.true_divide(x, y)
    return np.true_divide(x.astype(np.float32), y.astype(np.float32))  # cast to the declared type afterwards


_UNARY = {
    "abs": np.abs, "acos": np.arccos, "asin": np.arcsin, "atan": np.arctan, "atanh": np.arctanh,
    "ceil": np.ceil, "cos": np.cos, "cosh": np.cosh, "exp": np.exp, "exp2": np.exp2, "floor": np.floor,
    "logical_not": np.logical_not, "round": np.round, "sign": np.sign, "sin": np.sin, "sinh": np.sinh,
    "sqrt": np.sqrt, "square": np.square, "tan": np.tan, "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, np.float32(0)), "relu6": lambda x: np.clip(x, np.float32(0), np.float32(6)),
    "sigmoid": lambda x: np.float32(1) / (np.float32(1) + np.exp(-x)),
    "silu": lambda x: x / (np.float32(1) + np.exp(-x)),
    "softplus": lambda x: np.logaddexp(np.float32(0), x),
    "softsign": lambda x: x / (np.float32(1) + np.abs(x)),
    "erf": lambda x: np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.float32),
    "identity": lambda x: x,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = (lambda fn: lambda a: fn(a["x"]))(_fn)


@op("inverse")
def inverse(a: Args) -> np.ndarray:
    return np.float32(1) / (f32(a["x"]) + np.float32(a.get("epsilon", 1e-4)))


@op("log")
def log(a: Args) -> np.ndarray:
    return np.log(f32(a["x"]) + np.float32(a.get("epsilon", 1e-45)))


@op("rsqrt")
def rsqrt(a: Args) -> np.ndarray:
    return np.float32(1) / np.sqrt(f32(a["x"]) + np.float32(a.get("epsilon", 1e-12)))


@op("clip")
def clip(a: Args) -> np.ndarray:
    return np.minimum(np.maximum(a["x"], np.float32(a["alpha"])), np.float32(a["beta"]))


@op("threshold")
def threshold(a: Args) -> np.ndarray:
    return np.maximum(a["x"], np.float32(a["alpha"]))


@op("elu")
def elu(a: Args) -> np.ndarray:
    x, alpha = f32(a["x"]), np.float32(a.get("alpha", 1.0))
    return np.where(x > 0, x, alpha * (np.exp(x) - np.float32(1)))


@op("leaky_relu")
def leaky_relu(a: Args) -> np.ndarray:
    x = f32(a["x"])
    return np.where(x >= 0, x, np.float32(a.get("alpha", 0.01)) * x)


@op("gelu")
def gelu(a: Args) -> np.ndarray:
    x, mode = f32(a["x"]), str(a.get("mode", "EXACT"))
    if mode == "TANH_APPROXIMATION":
        inner = np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
        return np.float32(0.5) * x * (np.float32(1) + np.tanh(inner))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (np.float32(1) + np.exp(np.float32(-1.702) * x))
    if mode == "EXACT":
        erf = np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64) / math.sqrt(2))
        return (0.5 * x.astype(np.float64) * (1 + erf)).astype(np.float32)
    raise a.fail(f"unknown mode {mode!r} (EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION)")


@op("softmax")
def softmax(a: Args) -> np.ndarray:
    x = f32(a["x"])
    axis = a.integer("axis", -1)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@op("select")
def select(a: Args) -> np.ndarray:
    return np.where(np.asarray(a["cond"]).astype(bool), a["a"], a["b"])


@op("cast")
def cast(a: Args) -> np.ndarray:
    return cast_to(np.asarray(a["x"]), str(a["dtype"]), a)


# --- linear algebra and normalization ---------------------------------------------------------

@op("linear")
def linear(a: Args) -> np.ndarray:
    out = np.matmul(f32(a["x"]), f32(a["weight"]).T)
    return out + f32(a["bias"]) if a.has("bias") else out


@op("matmul")
def matmul(a: Args) -> np.ndarray:
    x, y = f32(a["x"]), f32(a["y"])
    if a.flag("transpose_x") and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.flag("transpose_y") and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@op("layer_norm")
def layer_norm(a: Args) -> np.ndarray:
    x = f32(a["x"])
    axes = tuple(axis_index(i, x.ndim, a) for i in a.ints("axes", list(range(x.ndim))))
    norm_shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    num = x - np.mean(x, axis=axes, keepdims=True)
    den = np.sqrt(np.sum(num * num, axis=axes, keepdims=True) / np.float32(np.prod(norm_shape))
                  + np.float32(a.get("epsilon", 1e-5)))
    out = num / den
    if a.has("gamma"):
        out = out * f32(a["gamma"]).reshape(norm_shape)
    if a.has("beta"):
        out = out + f32(a["beta"]).reshape(norm_shape)
    return out


@op("scaled_dot_product_attention")
def sdpa(a: Args) -> np.ndarray:
    q, k, v = f32(a["query"]), f32(a["key"]), f32(a["value"])
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.float32(math.sqrt(q.shape[-1]))
    if a.has("attn_mask"):
        mask = np.asarray(a["attn_mask"])
        scores = np.where(mask, scores, np.float32(-np.inf)) if mask.dtype == bool else scores + mask
    e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    return np.matmul(e / np.sum(e, axis=-1, keepdims=True), v)


# --- reductions ------------------------------------------------------------------------------

def _reduce(fn: Callable[..., np.ndarray]) -> Op:
    def run(a: Args) -> np.ndarray:
        x = np.asarray(a["x"])
        axes = tuple(axis_index(i, x.ndim, a) for i in a.ints("axes")) if a.get("axes") is not None else None
        return fn(x, axis=axes, keepdims=a.flag("keep_dims"))
    return run


def _logsumexp(x: np.ndarray, axis: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


OPS.update({
    "reduce_mean": _reduce(np.mean), "reduce_sum": _reduce(np.sum), "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min), "reduce_prod": _reduce(np.prod),
    "reduce_sum_square": _reduce(lambda x, **k: np.sum(x * x, **k)),
    "reduce_l1_norm": _reduce(lambda x, **k: np.sum(np.abs(x), **k)),
    "reduce_l2_norm": _reduce(lambda x, **k: np.sqrt(np.sum(x * x, **k))),
    "reduce_log_sum": _reduce(lambda x, **k: np.log(np.sum(x, **k))),
    "reduce_log_sum_exp": _reduce(_logsumexp),
})


@op("reduce_argmax", "reduce_argmin")
def reduce_arg(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = axis_index(a.integer("axis", -1), x.ndim, a)
    out = (np.argmax if a.op_type == "reduce_argmax" else np.argmin)(x, axis=axis)
    return np.expand_dims(out, axis) if a.flag("keep_dims") else out


# --- compile-time (constexpr) dequantization ---------------------------------------------------

def _blocks(values: np.ndarray, shape: tuple[int, ...], a: Args, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(the data's shape split into (blocks, block size) pairs, `values` shaped to broadcast over it):
    one value per block without materialising the repeated array."""
    if values.ndim != len(shape):
        raise a.fail(f"{what} has rank {values.ndim}, data rank {len(shape)}")
    split: list[int] = []
    for axis, (d, s) in enumerate(zip(shape, values.shape)):
        if s == 0 or d % s:
            raise a.fail(f"{what} dim {axis} ({s}) does not divide the data's ({d})")
        split += [s, d // s]
    return tuple(split), values.reshape([n for s in values.shape for n in (s, 1)])


@op("constexpr_blockwise_shift_scale")
def blockwise_shift_scale(a: Args) -> np.ndarray:
    """iOS18: output[i, j, ..] = scale[i0, j0, ..] * (data[i, j, ..] - offset[i0, j0, ..]),
    block size = data.shape / scale.shape per dimension."""
    data = np.array(a["data"], dtype=np.float32)  # the one full-size buffer: shifted and scaled in place
    split, scale = _blocks(f32(a["scale"]), data.shape, a, "scale")
    blocked = data.reshape(split)
    if a.get("offset") is not None:
        blocked -= _blocks(f32(a["offset"]), data.shape, a, "offset")[1]
    blocked *= scale
    return data


def _along(values: np.ndarray, rank: int, axis: int) -> np.ndarray:
    if values.ndim == 0:
        return values
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


@op("constexpr_affine_dequantize")
def affine_dequantize(a: Args) -> np.ndarray:
    """iOS16: scale * (quantized_data - zero_point), scale / zero_point scalars or vectors along `axis`."""
    q = f32(a["quantized_data"])
    axis = axis_index(a.integer("axis"), q.ndim, a)
    zp, scale = f32(a["zero_point"]), f32(a["scale"])
    return _along(scale, q.ndim, axis) * (q - _along(zp, q.ndim, axis))


@op("constexpr_cast")
def constexpr_cast(a: Args) -> np.ndarray:
    return cast_to(np.asarray(a["source_val"]), str(a["output_dtype"]), a)
