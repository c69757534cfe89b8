"""Read MIL blob storage files (`weights/weight.bin`) with numpy alone, never outside the file.

Format (coremltools `mlmodel/src/MILBlob/Blob/StorageFormat.hpp`, version 2), little endian:

    storage_header  64 bytes: uint32 count, uint32 version (= 2), 56 reserved bytes
    per blob        blob_metadata, 64 bytes at the offset a const's `blobFileValue.offset` names:
                        uint32 sentinel (0xDEADBEEF), uint32 mil_dtype (`BlobDataType`),
                        uint64 sizeInBytes, uint64 offset (of the data, from the file start),
                        uint64 padding_size_in_bits (unused bits at the end of sub-byte data),
                        32 reserved bytes
                    then the data, at `offset`, `sizeInBytes` long (64-byte aligned by writers)

Sub-byte data (int4, uint1/2/3/4/6) is one bit stream packed least significant bit first, an
element's bits contiguous and possibly straddling bytes (`coremltools.optimize._utils.
pack_elements_into_bits`); `padding_size_in_bits` says how many bits of the last byte are unused.

The file is untrusted input: every offset and size is checked against the file before a byte is
read, and a blob must hold exactly the elements its tensor type declares. A violation raises
`BlobError` naming the metadata offset and the problem; nothing is read past the file's end.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HEADER_SIZE = 64
METADATA_SIZE = 64
SENTINEL = 0xDEADBEEF
VERSION = 2

# BlobDataType (MILBlob/Blob/BlobDataType.hpp) -> MIL dtype name (as MIL_pb2.DataType names read
# lower-cased with "float" -> "fp", the spelling runtime.coreml.package uses).
BLOB_DTYPES: dict[int, str] = {
    1: "fp16", 2: "fp32", 3: "uint8", 4: "int8", 5: "bf16", 6: "int16", 7: "uint16", 8: "int4",
    9: "uint1", 10: "uint2", 11: "uint4", 12: "uint3", 13: "uint6", 14: "int32", 15: "uint32",
    16: "fp8e4m3fn", 17: "fp8e5m2",
}
ALIASES = {"bfp16": "bf16", "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# Byte-sized types: numpy dtype of the stored elements.
BYTE_TYPES: dict[str, np.dtype] = {
    "fp16": np.dtype("<f2"), "fp32": np.dtype("<f4"), "uint8": np.dtype("u1"), "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"), "uint16": np.dtype("<u2"), "int32": np.dtype("<i4"), "uint32": np.dtype("<u4"),
    "bf16": np.dtype("<u2"),  # decoded to float32 by widening the bit pattern
}
# Sub-byte types: bits per element, signed.
SUB_BYTE: dict[str, tuple[int, bool]] = {
    "int4": (4, True), "uint4": (4, False), "uint1": (1, False), "uint2": (2, False),
    "uint3": (3, False), "uint6": (6, False),
}
_META = struct.Struct("<IIQQQ")


class BlobError(Exception):
    """A weight blob that cannot be read safely: out of the file, wrong sentinel, wrong size or
    dtype. The package is malformed (or hostile); re-convert it rather than work around it."""


@dataclass(frozen=True)
class BlobMeta:
    """One blob_metadata record (`offset` is where the record itself lies)."""

    offset: int
    dtype: str
    size: int
    data_offset: int
    padding_bits: int

    def as_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "dtype": self.dtype, "size": self.size,
                "data_offset": self.data_offset, "padding_bits": self.padding_bits}


def canonical_dtype(dtype: str) -> str:
    return ALIASES.get(dtype, dtype)


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        if int(d) < 0:
            raise BlobError(f"shape {list(shape)} has a negative or unknown dimension; a blob needs a static shape")
        n *= int(d)
    return n


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool) -> np.ndarray:
    """`count` elements of `nbits` each from an LSB-first bit stream (int8 if signed, else uint8)."""
    packed = packed.astype(np.uint8, copy=False)
    if packed.size * 8 < count * nbits:
        raise BlobError(f"{packed.size} bytes hold fewer than {count} {nbits}-bit elements")
    if 8 % nbits == 0:  # elements never straddle bytes: one table lookup per byte gives its elements, signed
        return np.take(_byte_table(nbits, signed), packed).view(np.int8 if signed else np.uint8)[:count]
    else:
        bits = np.unpackbits(packed, bitorder="little")[: count * nbits].reshape(count, nbits)
        values = np.zeros(count, dtype=np.uint8)
        for i in range(nbits):
            values |= bits[:, i] << np.uint8(i)
    if signed:
        wide = values.astype(np.int16)
        return np.where(wide >= (1 << (nbits - 1)), wide - (1 << nbits), wide).astype(np.int8)
    return values.astype(np.uint8, copy=False)


@lru_cache(maxsize=None)
def _byte_table(nbits: int, signed: bool) -> np.ndarray:
    """[256] of the elements each byte value holds (8 // nbits bytes, least significant first, int8 if
    signed), packed into one little-endian word: a lookup yields a byte's elements in memory order."""
    shifts = np.arange(0, 8, nbits, dtype=np.uint16)
    fields = (np.arange(256, dtype=np.uint16)[:, None] >> shifts) & ((1 << nbits) - 1)
    if signed:
        fields = np.where(fields >= (1 << (nbits - 1)), fields.astype(np.int16) - (1 << nbits), fields)
    return np.ascontiguousarray(fields.astype(np.int8 if signed else np.uint8)).view(f"<u{8 // nbits}").reshape(256)


def bf16_to_fp32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


class BlobFile:
    """A blob storage file, memory-mapped read-only; arrays returned are copies."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER_SIZE:
                    raise BlobError(f"{self.path}: {size} bytes, shorter than the {HEADER_SIZE}-byte storage header")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise BlobError(f"{self.path}: cannot be read ({e.strerror})") from e
        self.size = len(self._map)  # bounds are checked against what is mapped, not a stat taken earlier
        self.count, self.version = struct.unpack_from("<II", self._map, 0)
        if self.version != VERSION:
            self._map.close()
            raise BlobError(f"{self.path}: storage header version {self.version} at offset 0, this reader "
                            f"reads version {VERSION} (the MIL blob format of iOS15 onwards)")

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> BlobFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_range(self, start: int, length: int, what: str, at: int) -> None:
        if start < 0 or length < 0 or start + length > self.size:
            raise BlobError(f"{self.path.name}: blob metadata at offset {at}: {what} [{start}, {start + length}) "
                            f"lies outside the file ({self.size} bytes)")

    def metadata(self, offset: int) -> BlobMeta:
        """The metadata record at `offset` (the value a const's blobFileValue carries), checked."""
        offset = int(offset)
        if offset < HEADER_SIZE:
            raise BlobError(f"{self.path.name}: blob metadata at offset {offset}: overlaps the {HEADER_SIZE}-byte storage header")
        self._check_range(offset, METADATA_SIZE, "the metadata record", offset)
        sentinel, code, size, data_offset, padding = _META.unpack_from(self._map, offset)
        if sentinel != SENTINEL:
            raise BlobError(f"{self.path.name}: blob metadata at offset {offset}: bad sentinel 0x{sentinel:08X} "
                            f"(expected 0x{SENTINEL:08X}); the offset does not point at a blob")
        if code not in BLOB_DTYPES:
            raise BlobError(f"{self.path.name}: blob metadata at offset {offset}: unknown data type code {code}")
        self._check_range(data_offset, size, "the data", offset)
        if data_offset < HEADER_SIZE:
            raise BlobError(f"{self.path.name}: blob metadata at offset {offset}: data at {data_offset} overlaps the storage header")
        if data_offset < offset + METADATA_SIZE and offset < data_offset + size:
            raise BlobError(f"{self.path.name}: blob metadata at offset {offset}: data [{data_offset}, {data_offset + size}) "
                            f"overlaps its own metadata record")
        return BlobMeta(offset, BLOB_DTYPES[code], int(size), int(data_offset), int(padding))

    def read(self, offset: int, dtype: str, shape: Sequence[int]) -> np.ndarray:
        """The blob at metadata `offset` as a `shape` array of MIL `dtype`.

        Byte-sized types come back in their numpy dtype (bf16 widened to float32); sub-byte types
        as int8 (int4) or uint8 (uint*). The blob's dtype and size must match exactly."""
        dtype = canonical_dtype(dtype)
        meta = self.metadata(offset)
        where = f"{self.path.name}: blob metadata at offset {meta.offset}"
        if meta.dtype != dtype:
            raise BlobError(f"{where}: holds {meta.dtype} data, the program reads it as {dtype}")
        count = element_count(shape)
        raw = np.frombuffer(self._map, dtype=np.uint8, count=meta.size, offset=meta.data_offset)
        if dtype in SUB_BYTE:
            nbits, signed = SUB_BYTE[dtype]
            if meta.padding_bits >= 8:
                raise BlobError(f"{where}: {meta.padding_bits} padding bits (sub-byte data pads less than one byte)")
            stored = meta.size * 8 - meta.padding_bits
            if stored != count * nbits:
                raise BlobError(f"{where}: {meta.size} bytes less {meta.padding_bits} padding bits hold "
                                f"{stored / nbits:g} {dtype} elements, the tensor {list(shape)} needs {count}")
            return unpack_bits(raw, nbits, count, signed).reshape(tuple(int(d) for d in shape))
        if dtype not in BYTE_TYPES:
            raise BlobError(f"{where}: {dtype} blobs are not supported by this reader")
        np_dtype = BYTE_TYPES[dtype]
        if meta.size != count * np_dtype.itemsize:
            raise BlobError(f"{where}: {meta.size} bytes of {dtype}, the tensor {list(shape)} needs "
                            f"{count * np_dtype.itemsize} ({count} elements)")
        values = raw.view(np_dtype).copy()
        if dtype == "bf16":
            values = bf16_to_fp32(values)
        return values.reshape(tuple(int(d) for d in shape))

    def entries(self) -> list[BlobMeta]:
        """Every blob, walking the records from the header as the MIL reader does (`count` of them)."""
        out: list[BlobMeta] = []
        offset = HEADER_SIZE
        for _ in range(self.count):
            meta = self.metadata(offset)
            out.append(meta)
            following = meta.data_offset + meta.size
            following += (-following) % 64
            if following <= offset:
                raise BlobError(f"{self.path.name}: blob metadata at offset {offset}: its data lies before it, "
                                f"the chain of records does not advance")
            offset = following
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: version, count, file size and every blob's record."""
        return {"version": self.version, "count": self.count, "size_bytes": self.size,
                "blobs": [m.as_dict() for m in self.entries()]}
