"""The safetensors format, read and written by hand (no ``safetensors`` package needed).

A .safetensors file is:

    8 bytes   little-endian u64 N: length of the header
    N bytes   JSON: {"name": {"dtype": "BF16", "shape": [4096, 4096], "data_offsets": [begin, end]},
                     ..., "__metadata__": {"format": "pt"}}
    the rest  raw tensor bytes, row-major, little-endian; offsets are relative to byte 8 + N

No pickle, no code: just a table of contents and bytes, which is why Hugging Face moved to it.
Because each tensor is a plain byte range we can memory-map it: the array costs no RAM until it
is read, and the OS can drop its pages again under pressure.

bfloat16 has no NumPy dtype, so BF16 tensors come back as raw ``uint16`` bits (see
``packed.bf16_to_f32``). ``safetensors.numpy.load_file`` refuses BF16 for the same reason.
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from .errors import CheckpointError, CheckpointNotFound

# safetensors dtype name -> how NumPy holds it (BF16 as raw bits)
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint16): "BF16",
          np.dtype(np.float64): "F64", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
          np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
MAX_HEADER = 100 * 2**20   # the format's own limit: headers over 100 MB are refused


def read_header(path) -> tuple[dict, int]:
    """-> (header dict without "__metadata__", offset where tensor data starts). Checks every
    entry against the file size, so a truncated download is caught here, not mid-generation."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFound(f"{path}: no such safetensors file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: bad safetensors header length {n} (file has {size} bytes): "
                                  "truncated or not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + n
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: bad header entry for {name!r}: {info!r}") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        expect = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
        if end - begin != expect or begin < 0:
            raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes, shape {shape} {dtype} "
                                  f"needs {expect}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, "
                                  f"file has {size}")
    return header, data_start


def load(path) -> dict:
    """{name: memory-mapped array} for every tensor in the file (BF16 as uint16 bits).

    Each tensor gets its own small mapping, so dropping the array (e.g. after quantising it to
    int8) unmaps it and gives its pages back."""
    header, data_start = read_header(path)
    out = {}
    for name, info in header.items():
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        begin = info["data_offsets"][0]
        if math.prod(shape) == 0:
            out[name] = np.empty(shape, dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
    return out


def dtype_name(arr) -> str:
    """How a NumPy array is stored in safetensors (uint16 means raw BF16 bits here)."""
    return _NAMES[np.dtype(arr.dtype)]


def write(path, specs: dict, fill, metadata: dict | None = None) -> None:
    """Write a safetensors file without holding its tensors in memory.

    specs: {name: (dtype name e.g. "BF16", shape)}, in file order. ``fill(name, f)`` writes
    exactly that tensor's bytes to the open file ``f`` (in any number of pieces)."""
    header, offset = {}, 0
    for name, (dt, shape) in specs.items():
        n = math.prod(shape) * np.dtype(DTYPES[dt]).itemsize
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)   # pad with spaces so tensor data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        start = f.tell()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            fill(name, f)
            if f.tell() - start != info["data_offsets"][1]:
                raise ValueError(f"write: fill() wrote the wrong number of bytes for {name!r}")


def save(path, tensors: dict, metadata: dict | None = None) -> None:
    """{name: array} -> a .safetensors file. float32/float16 as such, uint16 arrays as BF16 bits."""
    specs = {k: (dtype_name(v), v.shape) for k, v in tensors.items()}
    write(path, specs, lambda name, f: f.write(np.ascontiguousarray(tensors[name]).astype(
        np.asarray(tensors[name]).dtype.newbyteorder("<"), copy=False).tobytes()), metadata)
