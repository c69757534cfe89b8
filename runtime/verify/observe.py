"""Observe an .mlpackage: what it really is, read from its files, never loaded for prediction.

The observed contract lists per function the inputs, outputs and states (names, dtypes, default
and enumerated shapes), the opset, MIL op counts and op output dtypes; every weight, compressed
(op kind, storage dtype and bits, granularity, block size) or dense, mapped back to the module
it belongs to; the weight-blob table and which blobs the functions share; the metadata, the
specification version and the size on disk. Every weight reference must resolve inside the
package: a reference that does not is a `problem`, never a read outside the package.

Module mapping: the exporter lifts the parameter `model.<module>.weight` as the placeholder
`p_model_<module with '.' -> '_'>_weight`, and coremltools names its const after it (plus
`_to_fp16` and `_quantized` suffixes). Underscores are ambiguous, so a name maps to a module
only through the list of modules the caller expects (the spec's quantization plan).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from runtime.coreml.package import feature, function_ops, load_spec, op_dtype, op_name, size_mb, spec_path

from .blobs import BlobError, BlobFile

PARAM_PREFIX = "p_model_"
NAME_SUFFIXES = ("_quantized", "_to_fp16", "_to_fp32")
BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "fp16": 16, "fp32": 32, "int16": 16, "uint16": 16,
        "int32": 32, "uint1": 1, "uint2": 2, "uint3": 3, "uint6": 6, "bool": 8}
MODEL_PATH = "@model_path/"


def mangle(module: str) -> str:
    return PARAM_PREFIX + module.replace(".", "_") + "_weight"


def weight_root(name: str) -> str:
    """`p_model_layers_0_mlp_up_proj_weight_to_fp16_quantized` -> `p_model_layers_0_mlp_up_proj_weight`."""
    changed = True
    while changed:
        changed = False
        for suffix in NAME_SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    return name


def _dtype(value_type: Any) -> tuple[str, list[int]]:
    from coremltools.proto import MIL_pb2

    t = value_type.tensorType
    dims = [int(d.constant.size) if d.WhichOneof("dimension") == "constant" else -1 for d in t.dimensions]
    return MIL_pb2.DataType.Name(t.dataType).lower().replace("float", "fp"), dims


class _Package:
    """The package's files, with every weight reference resolved inside it (or a problem recorded)."""

    def __init__(self, package: Path):
        self.root = Path(package)
        self.weights_root = spec_path(self.root).parent
        self.files: dict[str, BlobFile | None] = {}
        self.problems: list[str] = []

    def blob_file(self, file_name: str) -> BlobFile | None:
        if file_name in self.files:
            return self.files[file_name]
        found: BlobFile | None = None
        rel = file_name[len(MODEL_PATH):] if file_name.startswith(MODEL_PATH) else None
        path = (self.weights_root / rel).resolve() if rel else None
        if rel is None or ".." in Path(rel).parts or path is None or not path.is_relative_to(self.weights_root.resolve()):
            self.problems.append(f"weight file {file_name!r} is not inside the package")
        elif not path.is_file():
            self.problems.append(f"weight file {file_name!r} does not exist in the package")
        else:
            try:
                found = BlobFile(path)
            except BlobError as e:
                self.problems.append(f"weight file {file_name!r}: {e}")
        self.files[file_name] = found
        return found

    def value(self, value: Any, where: str) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        """A const's value (None when it cannot be read) and its blob reference, if any."""
        kind = value.WhichOneof("value")
        dtype, shape = _dtype(value.type) if value.type.WhichOneof("type") == "tensorType" else ("", [])
        if kind != "blobFileValue":
            return None, None
        ref = {"file": value.blobFileValue.fileName, "offset": int(value.blobFileValue.offset)}
        blobs = self.blob_file(ref["file"])
        if blobs is None:
            return None, ref
        try:
            return blobs.read(ref["offset"], dtype, shape), ref
        except BlobError as e:
            self.problems.append(f"{where}: {e}")
            return None, ref


def _args(op: Any) -> dict[str, Any]:
    """Immediate values bound to a constexpr op's parameters: its inputs (opset iOS18), or its
    attributes (coremltools writes the constexpr ops of opsets iOS16/iOS17 that way)."""
    out = {k: v for k, v in op.attributes.items() if k != "name"}
    out.update({k: v.arguments[0].value for k, v in op.inputs.items() if v.arguments and v.arguments[0].HasField("value")})
    return out


def _granularity(data_shape: list[int], scale_shape: list[int] | None) -> tuple[str, int | None]:
    if not scale_shape or all(d == 1 for d in scale_shape):
        return "per_tensor", None
    blocks = [(d // s if s else 0) for d, s in zip(data_shape, scale_shape)]
    if len(scale_shape) == len(data_shape) and scale_shape[0] == data_shape[0] and all(b == 1 for b in blocks[:1]) \
            and all(s == 1 for s in scale_shape[1:]):
        return "per_channel", None
    if len(scale_shape) == len(data_shape) and scale_shape[0] == data_shape[0] and blocks[-1] > 1:
        return "per_block", blocks[-1]
    return "other", None


def _finite(arr: np.ndarray | None) -> bool:
    return arr is None or not np.issubdtype(arr.dtype, np.floating) or bool(np.isfinite(arr).all())


def _weights(ops: list[Any], pkg: _Package, modules: dict[str, str], fn: str) -> dict[str, Any]:
    compressed, dense, nonfinite, refs = [], [], [], []
    for op in ops:
        name = op_name(op) or (op.outputs[0].name if op.outputs else "")
        if op.type == "const":
            arr, ref = pkg.value(op.attributes["val"], f"function {fn!r} const {name!r}")
            dtype, shape = _dtype(op.outputs[0].type) if op.outputs and op.outputs[0].type.WhichOneof("type") == "tensorType" else ("", [])
            if ref is None:
                imm = op.attributes["val"]
                if dtype in ("fp16", "fp32") and imm.immediateValue.WhichOneof("value") == "tensor":
                    t = imm.immediateValue.tensor
                    vals = np.asarray(list(t.floats.values) or np.frombuffer(t.bytes.values, np.float16 if dtype == "fp16" else np.float32))
                    if vals.size and not np.isfinite(vals).all():
                        nonfinite.append(name)
                continue
            refs.append((ref["file"], ref["offset"]))
            if not _finite(arr):
                nonfinite.append(name)
            dense.append({"name": name, "dtype": dtype, "shape": shape, "elements": int(np.prod(shape)) if shape else 1,
                          "module": modules.get(weight_root(name)), "blob": ref,
                          # all zeros: the converter's materialised absent bias (a `linear` without one), no weight
                          "zeros": arr is not None and arr.size > 0 and not np.any(arr)})
        elif op.type.startswith("constexpr_"):
            args = _args(op)
            entry: dict[str, Any] = {"name": op.outputs[0].name, "op": op.type, "module": modules.get(weight_root(op.outputs[0].name))}
            for key in ("data", "quantized_data", "indices", "scale", "offset", "zero_point", "lut"):
                if key in args:
                    dtype, shape = _dtype(args[key].type)
                    arr, ref = pkg.value(args[key], f"function {fn!r} {op.type} {entry['name']!r} {key}")
                    entry[key] = {"dtype": dtype, "shape": shape, "blob": ref}
                    if ref:
                        refs.append((ref["file"], ref["offset"]))
                    if key == "scale" and not _finite(arr):
                        nonfinite.append(f"{entry['name']}.scale")
            data = entry.get("data") or entry.get("quantized_data") or {}
            entry["storage_dtype"] = data.get("dtype")
            entry["bits"] = BITS.get(data.get("dtype") or "")
            entry["shape"] = list(_dtype(op.outputs[0].type)[1])
            entry["granularity"], entry["block_size"] = _granularity(entry["shape"], (entry.get("scale") or {}).get("shape"))
            compressed.append(entry)
    return {"compressed": compressed, "dense": dense, "nonfinite_fp_consts": nonfinite, "refs": refs}


def _consumers(ops: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for op in ops:
        for arg in op.inputs.values():
            for b in arg.arguments:
                if b.name:
                    out[b.name].append(op)
    return out


def observe(package: Path, modules: Iterable[str] = (), islands: Iterable[str] = ()) -> dict[str, Any]:
    """The observed contract of `package`; `modules` (canonical names) lets weights map to modules;
    for each of `islands` (modules) every function lists the ops computing it and their dtypes."""
    package = Path(package)
    pkg = _Package(package)
    spec = load_spec(package)
    islands = list(islands)
    by_root = {mangle(m): m for m in [*modules, *islands]}
    desc = spec.description
    functions: dict[str, Any] = {}
    users: dict[tuple[str, int], list[str]] = defaultdict(list)
    for fd in desc.functions:
        fn = spec.mlProgram.functions[fd.name]
        ops = function_ops(spec, fd.name)
        weights = _weights(ops, pkg, by_root, fd.name)
        for ref in sorted(set(weights.pop("refs"))):
            users[ref].append(fd.name)
        out_dtypes: dict[str, Counter] = defaultdict(Counter)
        for op in ops:
            out_dtypes[op.type][op_dtype(op) or "none"] += 1
        functions[fd.name] = {
            "inputs": [feature(f) for f in fd.input], "outputs": [feature(f) for f in fd.output],
            "states": [feature(f) for f in fd.state], "opset": fn.opset,
            "op_counts": dict(sorted(Counter(op.type for op in ops).items())),
            "op_output_dtypes": {k: dict(sorted(v.items())) for k, v in sorted(out_dtypes.items())},
            **weights,
            "islands": _islands(ops, weights, islands),
        }
    blob_table = {name: (bf.describe() if bf else None) for name, bf in sorted(pkg.files.items())}
    shared = [{"file": f, "offset": o, "functions": fns} for (f, o), fns in sorted(users.items()) if len(fns) > 1]
    return {
        "package": package.name, "specification_version": int(spec.specificationVersion),
        "default_function": desc.defaultFunctionName, "functions": functions,
        "metadata": dict(sorted(desc.metadata.userDefined.items())),
        "blobs": {"files": blob_table, "shared": len(shared), "referenced": len(users),
                  "shared_by_all": sum(len(s["functions"]) == len(functions) for s in shared)},
        "size_bytes": sum(p.stat().st_size for p in package.rglob("*") if p.is_file()),
        "size_mb": size_mb(package), "problems": pkg.problems,
    }


def _islands(ops: list[Any], weights: dict[str, Any], islands: list[str]) -> dict[str, list[dict[str, Any]]]:
    names = {w["name"]: w["module"] for w in [*weights["dense"], *weights["compressed"]] if w["module"] in islands}
    regions = island_regions(ops, names)
    return {m: [{"op": op_name(op) or op.outputs[0].name, "type": op.type, "dtype": op_dtype(op)}
                for op in regions.get(m, []) if op.type != "const"] for m in islands}


def island_regions(ops: list[Any], weight_names: dict[str, str]) -> dict[str, list[Any]]:
    """Per island module (its weight const name -> module): the ops that compute it.

    The region starts at the op that consumes the module's weight and grows backwards through
    every producer whose outputs are consumed only inside the region, stopping at casts (the
    entry from fp16) and consts. See docs/verify.md for what this does not attribute."""
    consumers = _consumers(ops)
    producer = {o.name: op for op in ops for o in op.outputs}
    regions: dict[str, list[Any]] = {}
    for const_name, module in weight_names.items():
        if module in regions:
            continue
        roots = [op for op in consumers.get(const_name, []) if op.type != "cast"]
        for cast in [op for op in consumers.get(const_name, []) if op.type == "cast"]:
            roots += [c for o in cast.outputs for c in consumers.get(o.name, [])]
        region: list[Any] = []
        todo = list(roots)
        while todo:
            op = todo.pop()
            if any(op is r for r in region):
                continue
            region.append(op)
            if op.type == "cast" and op not in roots:
                continue
            for arg in op.inputs.values():
                for b in arg.arguments:
                    p = producer.get(b.name)
                    if p is None or p.type == "const" or any(p is r for r in region):
                        continue
                    outs = [c for o in p.outputs for c in consumers.get(o.name, [])]
                    if all(any(c is r for r in region) or c is op for c in outs):
                        todo.append(p)
        regions[module] = region
    return regions
