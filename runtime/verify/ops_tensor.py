"""MIL tensor ops in numpy: reshaping, slicing (slice_by_index masks, slice_update), gathers,
concat / split / stack / tile, fills, ranges, band_part and cumsum. Semantics per coremltools'
op definitions (`solve_slice_by_index_slice` for slicing, `compute_gather` for batch_dims)."""

from __future__ import annotations

import numpy as np

from .ops_base import INT32_MAX, Args, axis_index, op


@op("reshape")
def reshape(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    shape = a.ints("shape")
    if 0 in shape and a.opset >= 7:  # iOS17: a 0 copies x's dim counted from the right, 1 past x's rank
        dims = [1] * max(0, len(shape) - x.ndim) + list(x.shape[max(0, x.ndim - len(shape)):])
        shape = [dims[i] if s == 0 else s for i, s in enumerate(shape)]
    elif 0 in shape:  # iOS15/16: a 0 copies x's dim at the same index; only when len(shape) == rank(x)
        if len(shape) != x.ndim:
            raise a.fail(f"shape {shape} has a 0 but not rank {x.ndim}")
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if shape.count(-1) > 1:
        raise a.fail(f"shape {shape} has more than one -1")
    try:
        return x.reshape(shape)
    except ValueError as e:
        raise a.fail(f"cannot reshape {list(x.shape)} to {shape}") from e


@op("expand_dims")
def expand_dims(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = a.ints("axes")
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(axis_index(i, rank, a) for i in axes)))


@op("squeeze")
def squeeze(a: Args) -> np.ndarray:
    """iOS15 (unchanged in iOS17/18): the given axes of size 1 are removed; an axis of another
    size is ignored, as PyTorch does (x of shape (2, 3, 4) squeezed on [0, 1] stays (2, 3, 4)).
    Without axes, every dimension of size 1 is removed."""
    x = np.asarray(a["x"])
    if a.get("axes") is None:
        return np.squeeze(x)
    axes = tuple(sorted({i for i in (axis_index(i, x.ndim, a) for i in a.ints("axes")) if x.shape[i] == 1}))
    return np.squeeze(x, axis=axes) if axes else x


@op("transpose")
def transpose(a: Args) -> np.ndarray:
    return np.transpose(a["x"], a.ints("perm"))


def index_slices(a: Args, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """slice_by_index / slice_update addressing (coremltools `solve_slice_by_index_slice`):
    the python slices and the axes squeeze_mask removes."""
    rank = len(shape)
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * rank)
    bm, em, sm = a.bools("begin_mask", rank), a.bools("end_mask", rank), a.bools("squeeze_mask", rank)
    if not all(len(v) == rank for v in (begin, end, stride, bm, em, sm)):
        raise a.fail(f"begin/end/stride/masks must all have length rank(x) = {rank}")
    slices = []
    for i in range(rank):
        b = None if bm[i] else begin[i]
        e = None if em[i] or sm[i] else end[i]
        s = INT32_MAX if sm[i] else stride[i]
        if s == 0:
            raise a.fail(f"stride 0 on axis {i}")
        slices.append(slice(b, e, s))
    return tuple(slices), tuple(i for i in range(rank) if sm[i])


@op("slice_by_index")
def slice_by_index(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    slices, squeeze_axes = index_slices(a, x.shape)
    out = x[slices]
    return np.squeeze(out, axis=squeeze_axes) if squeeze_axes else out


@op("slice_update")
def slice_update(a: Args) -> np.ndarray:
    return slice_update_into(np.array(a["x"], copy=True), a)


def slice_update_into(x: np.ndarray, a: Args) -> np.ndarray:
    """`slice_update` writing into `x` itself (the interpreter passes a copy unless nothing else can
    see x: `Function.in_place_updates`)."""
    slices, _ = index_slices(a, x.shape)
    update = np.asarray(a["update"])
    target = x[slices].shape
    if int(np.prod(target)) != update.size:
        raise a.fail(f"update of shape {list(update.shape)} does not fill the slice {list(target)}")
    x[slices] = update.reshape(target)
    return x


@op("slice_by_size")
def slice_by_size(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    begin, size = a.ints("begin"), a.ints("size")
    ends = [x.shape[i] if s == -1 else b + s for i, (b, s) in enumerate(zip(begin, size))]
    return x[tuple(slice(b, e) for b, e in zip(begin, ends))]


def _indices(a: Args, indices: np.ndarray, dim: int) -> np.ndarray:
    idx = np.asarray(indices).astype(np.int64)
    if a.opset < 7:  # iOS15/16 gathers accept -dim <= i < 0 (iOS17+ call them out of bounds)
        idx = np.where((idx < 0) & (idx >= -dim), idx + dim, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= dim):
        raise a.fail(f"indices in [{idx.min()}, {idx.max()}] out of bounds for a dimension of {dim} "
                     f"(undefined behaviour on device)")
    return idx


@op("gather")
def gather(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = axis_index(a.integer("axis", 0), x.ndim, a)
    batch = a.integer("batch_dims", 0)
    idx = _indices(a, a["indices"], x.shape[axis])
    if batch == 0:
        return np.take(x, idx, axis=axis)
    if batch > axis or x.shape[:batch] != idx.shape[:batch]:
        raise a.fail(f"batch_dims {batch}: x {list(x.shape)} and indices {list(idx.shape)} do not share the batch dims")
    xb = x.reshape((-1,) + x.shape[batch:])
    ib = idx.reshape((-1,) + idx.shape[batch:])
    out = np.stack([np.take(p, i, axis=axis - batch) for p, i in zip(xb, ib)])
    return out.reshape(x.shape[:batch] + out.shape[1:])


@op("gather_along_axis")
def gather_along_axis(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = axis_index(a.integer("axis", 0), x.ndim, a)
    return np.take_along_axis(x, _indices(a, a["indices"], x.shape[axis]), axis=axis)


@op("concat")
def concat(a: Args) -> np.ndarray:
    values = [np.asarray(v) for v in a.many("values")]
    if values[0].ndim == 0:
        return np.stack(values)
    axis = axis_index(a.integer("axis"), values[0].ndim, a)
    if not a.flag("interleave"):
        return np.concatenate(values, axis=axis)
    if any(v.shape != values[0].shape for v in values):
        raise a.fail("interleave needs inputs of one shape")
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return np.stack(values, axis=axis + 1).reshape(shape)


@op("split")
def split(a: Args) -> tuple[np.ndarray, ...]:
    x = np.asarray(a["x"])
    axis = axis_index(a.integer("axis"), x.ndim, a)
    if a.get("split_sizes") is not None:
        sizes = a.ints("split_sizes")
    else:
        n = a.integer("num_splits")
        if x.shape[axis] % n:
            raise a.fail(f"num_splits {n} does not divide {x.shape[axis]}")
        sizes = [x.shape[axis] // n] * n
    if sum(sizes) != x.shape[axis]:
        raise a.fail(f"split sizes {sizes} do not sum to {x.shape[axis]}")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@op("stack")
def stack(a: Args) -> np.ndarray:
    values = [np.asarray(v) for v in a.many("values")]
    return np.stack(values, axis=axis_index(a.integer("axis"), values[0].ndim + 1, a))


@op("tile")
def tile(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    reps = a.ints("reps")
    if len(reps) != x.ndim or min(reps, default=1) <= 0:
        raise a.fail(f"reps {reps} must be positive, one per dimension of {list(x.shape)}")
    return np.tile(x, reps)


@op("fill")
def fill(a: Args) -> np.ndarray:
    return np.full(a.ints("shape"), a.get("value", 0.0))


@op("fill_like")
def fill_like(a: Args) -> np.ndarray:
    return np.full(np.shape(a["ref_tensor"]), a.get("value", 0.0))


@op("shape")
def shape(a: Args) -> np.ndarray:
    return np.array(np.shape(a["x"]), dtype=np.int32)


@op("range_1d")
def range_1d(a: Args) -> np.ndarray:
    start, end, step = (np.asarray(a[k]).reshape(()) for k in ("start", "end", "step"))
    if step == 0:
        raise a.fail("step 0")
    return np.arange(start, end, step)


@op("band_part")
def band_part(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    lower, upper = a.integer("lower", -1), a.integer("upper", -1)
    m = np.arange(x.shape[-2])[:, None]
    n = np.arange(x.shape[-1])[None, :]
    keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


@op("cumsum")
def cumsum(a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = axis_index(a.integer("axis", 0), x.ndim, a)
    if a.flag("reverse"):
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if a.flag("exclusive"):
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)), np.delete(out, -1, axis=axis)], axis=axis)
    return np.flip(out, axis) if a.flag("reverse") else out
