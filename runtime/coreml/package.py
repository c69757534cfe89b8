"""The .mlpackage on disk: multifunction assembly, metadata stamping, canonical hash, inspection.

`save_multifunction` rebuilds the model description and drops user metadata, so metadata is
stamped on the final package's protobuf directly (written with deterministic serialization).
The package Manifest names its items by random UUIDs; they are replaced by UUIDs derived from
the item paths, so identical inputs give a byte-identical package. The canonical hash covers
what defines the model: the deterministic serialization of the Model proto plus the weight files.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import coremltools as ct
from coremltools.proto import MIL_pb2, Model_pb2

MANIFEST = "Manifest.json"
MANIFEST_NAMESPACE = uuid.UUID("6b0c3f0e-5a55-4b8f-9c53-6d6f64656c73")
DROPPED_METADATA = ("com.github.apple.coremltools.conversion_date",)
MULTIARRAY_DTYPES = {Model_pb2.ArrayFeatureType.FLOAT16: "fp16", Model_pb2.ArrayFeatureType.FLOAT32: "fp32",
                     Model_pb2.ArrayFeatureType.INT32: "int32", Model_pb2.ArrayFeatureType.DOUBLE: "fp64"}


def _manifest(package: Path) -> dict[str, Any]:
    return json.loads((package / MANIFEST).read_text(encoding="utf-8"))


def spec_path(package: Path) -> Path:
    manifest = _manifest(package)
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    return package / "Data" / root["path"]


def weights_dir(package: Path) -> Path:
    return spec_path(package).parent / "weights"


def load_spec(package: Path) -> Model_pb2.Model:
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path(package).read_bytes())
    return spec


def write_spec(package: Path, spec: Model_pb2.Model) -> None:
    spec_path(package).write_bytes(spec.SerializeToString(deterministic=True))


def save_functions(models: dict[str, ct.models.MLModel], default: str, dest: Path, scratch: Path) -> None:
    """One package with every function (each model's `main`, renamed); identical weights are shared."""
    if default not in models:
        raise ValueError(f"default function {default!r} is not among {sorted(models)}")
    desc = ct.utils.MultiFunctionDescriptor()
    for name, model in models.items():
        path = scratch / f"{name}.mlpackage"
        model.save(str(path))
        desc.add_function(str(path), src_function_name="main", target_function_name=name)
    desc.default_function_name = default
    ct.utils.save_multifunction(desc, str(dest))


def stamp_metadata(package: Path, metadata: dict[str, str]) -> None:
    """Set user metadata on the saved package (the keys given win; conversion dates are dropped)."""
    spec = load_spec(package)
    user = spec.description.metadata.userDefined
    for key in DROPPED_METADATA:
        if key in user:
            del user[key]
    for key, value in sorted(metadata.items()):
        user[key] = value
    write_spec(package, spec)


def normalize_manifest(package: Path) -> None:
    """Replace the Manifest's random item UUIDs with ones derived from each item's path."""
    manifest = _manifest(package)
    renamed = {old: str(uuid.uuid5(MANIFEST_NAMESPACE, item["path"])).upper()
               for old, item in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    (package / MANIFEST).write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n", encoding="utf-8")


def canonical_hash(package: Path) -> str:
    """sha256 of the deterministic Model proto serialization plus every weight file (sorted paths)."""
    h = hashlib.sha256()
    proto = load_spec(package).SerializeToString(deterministic=True)
    h.update(b"model.mlmodel\0" + hashlib.sha256(proto).hexdigest().encode() + b"\n")
    wdir = weights_dir(package)
    for path in sorted(p for p in wdir.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        h.update(path.relative_to(wdir).as_posix().encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def size_mb(package: Path) -> float:
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file()) / (1 << 20)


def feature(f: Any) -> dict[str, Any]:
    kind = f.type.WhichOneof("Type")
    arr = f.type.multiArrayType if kind == "multiArrayType" else f.type.stateType.arrayType
    out: dict[str, Any] = {"name": f.name, "dtype": MULTIARRAY_DTYPES.get(arr.dataType, str(arr.dataType)),
                           "shape": [int(d) for d in arr.shape]}
    if kind == "multiArrayType" and arr.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
        out["enumerated_shapes"] = [[int(d) for d in s.shape] for s in arr.enumeratedShapes.shapes]
    return out


def _ops(block: Any) -> list[Any]:
    out = []
    for op in block.operations:
        out.append(op)
        for inner in op.blocks:
            out.extend(_ops(inner))
    return out


def function_ops(spec: Model_pb2.Model, name: str) -> list[Any]:
    fn = spec.mlProgram.functions[name]
    return _ops(fn.block_specializations[fn.opset])


def op_dtype(op: Any) -> str | None:
    """The element type of an op's first output (`fp16`, `fp32`, ...), None for non-tensors."""
    if not op.outputs:
        return None
    t = op.outputs[0].type
    if t.WhichOneof("type") != "tensorType":
        return None
    return MIL_pb2.DataType.Name(t.tensorType.dataType).lower().replace("float", "fp")


def op_name(op: Any) -> str:
    return op.attributes["name"].immediateValue.tensor.strings.values[0] if "name" in op.attributes else ""


def _tensor_desc(value: Any) -> tuple[str, list[int]]:
    t = value.type.tensorType
    return (MIL_pb2.DataType.Name(t.dataType).lower().replace("float", "fp"),
            [int(d.constant.size) for d in t.dimensions])


def compressed(ops: list[Any]) -> dict[str, dict[str, Any]]:
    """Dequantizing ops by output name: their op type, stored dtype and scale shape."""
    out = {}
    for op in ops:
        if not op.type.startswith("constexpr_"):
            continue
        args = {k: v.arguments[0].value for k, v in op.inputs.items() if v.arguments and v.arguments[0].HasField("value")}
        dtype, _ = _tensor_desc(args["data"]) if "data" in args else (None, None)
        _, scale = _tensor_desc(args["scale"]) if "scale" in args else (None, None)
        out[op.outputs[0].name] = {"op": op.type, "dtype": dtype, "scale_shape": scale}
    return dict(sorted(out.items()))


def inspect(package: Path) -> dict[str, Any]:
    """Functions (IO, states, op counts, feature descriptions), default function, user and standard metadata of a saved package."""
    spec = load_spec(package)
    desc = spec.description
    functions = {}
    for fd in desc.functions:
        ops = function_ops(spec, fd.name)
        functions[fd.name] = {
            "inputs": [feature(f) for f in fd.input], "outputs": [feature(f) for f in fd.output],
            "states": [feature(f) for f in fd.state],
            "op_counts": dict(sorted(Counter(op.type for op in ops).items())),
            "compressed": compressed(ops),
            "descriptions": {kind: {f.name: f.shortDescription for f in features}
                             for kind, features in (("inputs", fd.input), ("outputs", fd.output), ("states", fd.state))},
        }
    m = desc.metadata
    return {"default_function": desc.defaultFunctionName, "functions": functions,
            "metadata": dict(sorted(desc.metadata.userDefined.items())),
            "model_metadata": {"author": m.author, "license": m.license, "version": m.versionString,
                               "short_description": m.shortDescription},
            "specification_version": spec.specificationVersion}
