"""The ML program of an .mlpackage as the interpreter reads it: the Model proto found through the
Manifest, value types, and const values decoded from immediates or weight blobs.

A package is untrusted input. Its Manifest may only name a model file inside the package's
`Data` folder, and a blob reference may only name a file under the model's folder through
`@model_path/...`: absolute paths, `..` and links that lead elsewhere are refused (ProgramError),
and blob reads are bounds-checked by `runtime.verify.blobs`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np
from coremltools.proto import MIL_pb2, Model_pb2

from .blobs import BYTE_TYPES, SUB_BYTE, BlobError, BlobFile, bf16_to_fp32, element_count, unpack_bits
from .mil_ops import FLOAT_DTYPES, NP_DTYPES

MODEL_PATH = "@model_path/"


class ProgramError(Exception):
    """The package's program cannot be read or executed as written; the message says where."""


@dataclass(frozen=True)
class TensorDesc:
    """A declared tensor type: MIL dtype name and shape (None for an unknown dimension).

    `unknown_rank`: the rank itself is not known until run time. coremltools writes such a type
    (a `reshape` or `fill` to a runtime shape) as one variadic unknown dimension; any shape fits it."""

    dtype: str
    shape: tuple[int | None, ...]
    unknown_rank: bool = False

    def fits(self, shape: tuple[int, ...]) -> bool:
        if self.unknown_rank:
            return True
        return len(shape) == len(self.shape) and all(d is None or d == s for d, s in zip(self.shape, shape))

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def describe(self) -> str:
        """The declared shape as the messages print it: `?` an unknown dimension, `[*]` an unknown rank."""
        return "[*]" if self.unknown_rank else str([d if d is not None else "?" for d in self.shape])


def dtype_name(code: int) -> str:
    name = MIL_pb2.DataType.Name(code).lower()
    return {"bfloat16": "bf16"}.get(name, name.replace("float", "fp"))


def tensor_desc(value_type: Any, where: str) -> TensorDesc:
    """The tensor type of a ValueType (a state's wrapped tensor type for stateType)."""
    kind = value_type.WhichOneof("type")
    if kind == "stateType":
        return tensor_desc(value_type.stateType.wrappedType, where)
    if kind != "tensorType":
        raise ProgramError(f"{where}: {kind} values are not supported (tensors only)")
    t = value_type.tensorType
    dims = tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in t.dimensions)
    variadic = any(d.WhichOneof("dimension") == "unknown" and d.unknown.variadic for d in t.dimensions)
    return TensorDesc(dtype_name(t.dataType), () if variadic else dims, unknown_rank=variadic)


def model_file(package: Path) -> Path:
    """The package's model.mlmodel, as its Manifest's root item names it (inside `Data`)."""
    package = Path(package)
    try:
        manifest = json.loads((package / "Manifest.json").read_text(encoding="utf-8"))
        rel = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProgramError(f"{package}: no readable Manifest.json naming the root model ({e!r}); is it an .mlpackage?") from e
    data = (package / "Data").resolve()
    path = (package / "Data" / str(rel)).resolve()
    if Path(str(rel)).is_absolute() or ".." in Path(str(rel)).parts or not path.is_relative_to(data) or not path.is_file():
        raise ProgramError(f"{package}: Manifest root item {rel!r} is not a file inside the package's Data folder")
    return path


def load_model(path: Path) -> Any:
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError and friends
        raise ProgramError(f"{path}: not a CoreML Model protobuf ({e})") from e
    if spec.WhichOneof("Type") != "mlProgram":
        raise ProgramError(f"{path}: a {spec.WhichOneof('Type')} model; only ML programs (mlprogram) can be interpreted")
    return spec


class WeightFiles:
    """Blob files named `@model_path/...`, resolved only inside the model's folder."""

    def __init__(self, model_dir: Path):
        self.root = Path(model_dir).resolve()
        self._open: dict[str, BlobFile] = {}

    def get(self, file_name: str) -> BlobFile:
        if file_name in self._open:
            return self._open[file_name]
        rel = file_name[len(MODEL_PATH):] if file_name.startswith(MODEL_PATH) else None
        path = (self.root / rel).resolve() if rel else None
        if rel is None or Path(rel).is_absolute() or ".." in Path(rel).parts or path is None \
                or not path.is_relative_to(self.root):
            raise ProgramError(f"weight file {file_name!r} is not an '@model_path/...' file inside the package")
        if not path.is_file():
            raise ProgramError(f"weight file {file_name!r} does not exist in the package")
        self._open[file_name] = BlobFile(path)
        return self._open[file_name]

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def decode_value(value: Any, weights: WeightFiles, where: str) -> Any:
    """A proto Value as numpy (floats as float32, sub-byte ints widened) or a str for a string scalar."""
    desc = tensor_desc(value.type, where)
    if desc.unknown_rank or any(d is None for d in desc.shape):
        raise ProgramError(f"{where}: a constant with unknown dimensions {desc.describe()}")
    shape = tuple(int(d) for d in desc.shape if d is not None)
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        try:
            arr = weights.get(value.blobFileValue.fileName).read(value.blobFileValue.offset, desc.dtype, shape)
        except BlobError as e:
            raise BlobError(f"{where}: {e}") from e
    elif kind == "immediateValue" and value.immediateValue.WhichOneof("value") == "tensor":
        arr = _immediate(value.immediateValue.tensor, desc, shape, where)
        if isinstance(arr, str):
            return arr
    else:
        raise ProgramError(f"{where}: {kind} values are not supported (tensor immediates and blob files only)")
    return arr.astype(NP_DTYPES[desc.dtype], copy=False) if desc.dtype in NP_DTYPES else arr


def _immediate(t: Any, desc: TensorDesc, shape: tuple[int, ...], where: str) -> Any:
    count = element_count(shape)
    field = t.WhichOneof("value")
    if desc.dtype == "string":
        strings = list(t.strings.values)
        if len(strings) != count:
            raise ProgramError(f"{where}: {len(strings)} strings for shape {list(shape)}")
        return strings[0] if shape == () else np.array(strings, dtype=object).reshape(shape)
    if field == "bytes":
        raw = np.frombuffer(t.bytes.values, dtype=np.uint8)
        if desc.dtype in SUB_BYTE:
            nbits, signed = SUB_BYTE[desc.dtype]
            if raw.size != -(-count * nbits // 8):
                raise ProgramError(f"{where}: {raw.size} bytes for {count} {desc.dtype} elements")
            return unpack_bits(raw, nbits, count, signed).reshape(shape)
        np_dtype = BYTE_TYPES.get(desc.dtype) or np.dtype(NP_DTYPES.get(desc.dtype, np.uint8))
        if raw.size != count * np_dtype.itemsize:
            raise ProgramError(f"{where}: {raw.size} bytes for {count} {desc.dtype} elements")
        arr = raw.view(np_dtype)
        return (bf16_to_fp32(arr) if desc.dtype == "bf16" else arr).reshape(shape)
    if field is None:
        arr = np.zeros(0)
    else:
        arr = np.array(list(getattr(t, field).values))
    if arr.size != count:
        raise ProgramError(f"{where}: {arr.size} values for shape {list(shape)}")
    return arr.reshape(shape)


def _state_name(op: Any) -> str:
    bindings = op.inputs["input"].arguments if "input" in op.inputs else []
    return bindings[0].name if len(bindings) == 1 else ""


def op_reads(op: Any) -> list[str]:
    """Names an op reads, its nested blocks' reads included."""
    names = [b.name for arg in op.inputs.values() for b in arg.arguments if b.name]
    for block in op.blocks:
        for inner in block.operations:
            names += op_reads(inner)
        names += list(block.outputs)
    return names


def op_name(op: Any) -> str:
    """The op's `name` attribute, else its first output's name."""
    if "name" in op.attributes:
        values = op.attributes["name"].immediateValue.tensor.strings.values
        if values:
            return str(values[0])
    return op.outputs[0].name if op.outputs else op.type


@dataclass
class Function:
    """One function of the program: its typed inputs and states, outputs and operations."""

    name: str
    opset: int
    inputs: dict[str, TensorDesc]
    states: dict[str, TensorDesc]
    outputs: list[str]
    ops: list[Any]
    _last_uses: dict[int, list[str]] | None = dc_field(default=None, repr=False, compare=False)
    _in_place: set[int] | None = dc_field(default=None, repr=False, compare=False)
    _const_keys: dict[int, bytes] | None = dc_field(default=None, repr=False, compare=False)

    @staticmethod
    def parse(name: str, fn: Any) -> Function:
        inputs, states = {}, {}
        for nv in fn.inputs:
            desc = tensor_desc(nv.type, f"function {name!r} input {nv.name!r}")
            (states if nv.type.WhichOneof("type") == "stateType" else inputs)[nv.name] = desc
        if fn.opset not in fn.block_specializations:
            raise ProgramError(f"function {name!r}: no block for its opset {fn.opset!r}")
        block = fn.block_specializations[fn.opset]
        digits = "".join(c for c in fn.opset if c.isdigit())
        return Function(name, int(digits) if digits else 8, inputs, states, list(block.outputs), list(block.operations))

    def last_uses(self) -> dict[int, list[str]]:
        """Op index -> the values no later op reads (function outputs never appear): the
        interpreter drops each after that op, so a run holds one layer's working set, not every
        intermediate and weight of the program."""
        if self._last_uses is None:
            last: dict[str, int] = {}
            for index, op in enumerate(self.ops):
                for name in op_reads(op):
                    last[name] = index
                for o in op.outputs:  # a value nothing reads is dropped right away
                    last.setdefault(o.name, index)
            keep = set(self.outputs)
            by_op: dict[int, list[str]] = {}
            for name, index in last.items():
                if name not in keep:
                    by_op.setdefault(index, []).append(name)
            self._last_uses = by_op
        return self._last_uses

    def const_keys(self) -> dict[int, bytes]:
        """Op index -> a digest of what a const or constexpr op computes (its serialized value, blob
        reference included, or its type, parameters and the digests of the constants it reads, and its
        output types). The functions of a multifunction package share their weight blobs: keyed so,
        a weight dequantized for one function is the cached value of every other."""
        if self._const_keys is None:
            keys: dict[int, bytes] = {}
            by_name: dict[str, bytes] = {}
            for index, op in enumerate(self.ops):
                if op.type == "const" and "val" in op.attributes:
                    parts = [op.attributes["val"].SerializeToString()]
                elif op.type.startswith("constexpr_"):
                    parts = [op.type.encode()]
                    parts += [k.encode() + v.SerializeToString() for k, v in sorted(op.attributes.items()) if k != "name"]
                    for param, arg in sorted(op.inputs.items()):
                        for b in arg.arguments:
                            parts.append(param.encode() + (b.value.SerializeToString() if b.HasField("value")
                                                           else by_name.get(b.name, f"{self.name}:{b.name}".encode())))
                else:
                    continue
                parts += [o.type.SerializeToString() for o in op.outputs]
                key = hashlib.blake2b(b"\0".join(parts), digest_size=16).digest()
                keys[index] = key
                for i, o in enumerate(op.outputs):
                    by_name[o.name] = key + str(i).encode()
            self._const_keys = keys
        return self._const_keys

    def in_place_updates(self) -> set[int]:
        """Indices of the `slice_update` ops that may write into their input `x`: x comes from a
        `read_state` or another `slice_update` (never a constant, an input or a view of one), nothing
        reads x afterwards, and when x is a state's array (read, or updated in place from one) a
        `write_state` of that state follows before any `read_state` of it. coremltools threads a
        decode step's KV cache (all layers in one state) through one slice_update per layer: copying,
        each would copy the whole cache. The interpreter still checks at run time that no live value
        shares x's memory (a slice taken from it, say)."""
        if self._in_place is None:
            found: set[int] = set()
            producer: dict[str, str] = {}
            alias: dict[str, str] = {}  # value name -> the state whose array it is
            dying = {name: index for index, names in self.last_uses().items() for name in names}
            for index, op in enumerate(self.ops):
                out = op.outputs[0].name if op.outputs else ""
                if op.type == "read_state" and out:
                    alias[out] = _state_name(op)
                if op.type == "slice_update" and "x" in op.inputs and op.inputs["x"].arguments and out:
                    x = op.inputs["x"].arguments[0].name
                    state = alias.get(x)
                    if producer.get(x) in ("read_state", "slice_update") and dying.get(x) == index \
                            and (state is None or self._written_before_read(state, index)):
                        found.add(index)
                        if state is not None:
                            alias[out] = state
                for o in op.outputs:
                    producer[o.name] = op.type
            self._in_place = found
        return self._in_place

    def _written_before_read(self, state: str, after: int) -> bool:
        for op in self.ops[after + 1:]:
            if op.type in ("read_state", "write_state") and _state_name(op) == state:
                return op.type == "write_state"
        return False

    def op_types(self) -> dict[str, list[str]]:
        """Op type -> names of its ops, nested blocks included."""
        out: dict[str, list[str]] = {}
        todo = list(self.ops)
        while todo:
            op = todo.pop(0)
            out.setdefault(op.type, []).append(op_name(op))
            for block in op.blocks:
                todo.extend(block.operations)
        return out
