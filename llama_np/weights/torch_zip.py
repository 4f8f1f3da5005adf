"""PyTorch checkpoints (``torch.save``: Meta's ``consolidated.00.pth``) read without torch.

Since PyTorch 1.6 a ``.pth`` file is an uncompressed zip archive:

    consolidated/data.pkl        a pickle of the state dict; each tensor refers to a storage by key
    consolidated/data/0, /1 ...  the storages: raw little-endian bytes, stored (not deflated)
    consolidated/byteorder, version, ...

The pickle describes each tensor as a *call*:
``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)``,
where ``storage`` is a "persistent id" ``('storage', torch.BFloat16Storage, '0', 'cpu', numel)``.

Unpickling is running code: a pickle may name *any* importable function (``os.system``) and
call it. So we never use plain ``pickle.load``: ``RestrictedUnpickler.find_class`` returns our
own stand-ins for the handful of globals a state dict needs and refuses everything else before
it is called. Storages become memory maps straight over the zip member's bytes: a 16 GB
checkpoint "loads" in milliseconds and costs RAM only for what is read. bfloat16 storages come
back as raw ``uint16`` bits (NumPy has no bfloat16).
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile

import numpy as np

from .errors import CheckpointError, CheckpointNotFound

# torch storage class -> (NumPy dtype holding it, safetensors-style name)
STORAGES = {"BFloat16Storage": (np.uint16, "BF16"), "HalfStorage": (np.float16, "F16"),
            "FloatStorage": (np.float32, "F32"), "DoubleStorage": (np.float64, "F64"),
            "LongStorage": (np.int64, "I64"), "IntStorage": (np.int32, "I32"),
            "ShortStorage": (np.int16, "I16"), "CharStorage": (np.int8, "I8"),
            "ByteStorage": (np.uint8, "U8"), "BoolStorage": (np.bool_, "BOOL")}
_STORAGE_OF = {name: storage for storage, (_, name) in STORAGES.items()}


class _StorageType:
    """Stand-in for ``torch.BFloat16Storage`` & co.: only remembers the dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGES[name][0])


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """Our ``torch._utils._rebuild_tensor_v2``: a (possibly strided) view of a storage array."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or storage_offset < 0:
        raise CheckpointError(f"bad tensor layout: size {size}, stride {stride}, offset {storage_offset}")
    if math.prod(size) == 0:
        return np.empty(size, dtype=storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise CheckpointError(f"tensor of size {size} reaches element {last} of a storage of {storage.size}")
    flat = storage[storage_offset:]
    contiguous = tuple(math.prod(size[i + 1:]) for i in range(len(size)))
    if stride == contiguous or math.prod(size) == 1:
        return flat[:math.prod(size)].reshape(size)
    # A transposed or sliced tensor was saved: view its storage through the same strides.
    item = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(flat, size, tuple(s * item for s in stride), writeable=False)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *state):
    """Our ``torch._utils._rebuild_parameter``: an nn.Parameter is just its tensor here."""
    return data


# (module, name) -> what the pickle gets instead. Nothing else can be named.
ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
           ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
           ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
           ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}
ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGES})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict; refuses every global not in ``ALLOWED`` (before it can run)."""

    def __init__(self, file, load_storage, source: str = "checkpoint"):
        super().__init__(file)
        self.load_storage, self.source = load_storage, source

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(f"{self.source}: refusing to unpickle {module}.{name} (a checkpoint needs "
                                  "only tensors; this file may be malicious)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        return self.load_storage(stype, str(key), int(numel))


def member_offset(path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored zip member's data in the file: after its 30-byte local header,
    file name and extra field (the central directory's copy of the extra field may differ)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: corrupt zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def load(path) -> dict:
    """{name: array} from a ``torch.save`` zip file, storages memory-mapped (bf16 as uint16)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFound(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        with open(path, "rb") as f:
            magic = f.read(2)
        hint = "the legacy pre-1.6 torch.save format is not supported" if magic == b"\x80\x02" else \
            "truncated or corrupt download?"
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint ({e}; {hint})") from None
    with zf:
        pkls = [i for i in zf.infolist() if i.filename.endswith("data.pkl")]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the zip, found {len(pkls)}")
        prefix = pkls[0].filename[:-len("data.pkl")]
        members = {i.filename: i for i in zf.infolist()}
        size = os.path.getsize(path)
        try:
            data_pkl = zf.read(pkls[0])   # checks its CRC: a corrupt pickle fails here
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: corrupt data.pkl ({e})") from None

        def load_storage(stype: _StorageType, key: str, numel: int):
            info = members.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"{path}: storage {key} is missing from the zip")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: storage {key} is compressed; torch.save never does that")
            nbytes = numel * stype.dtype.itemsize
            if info.file_size < nbytes:
                raise CheckpointError(f"{path}: storage {key} has {info.file_size} bytes, needs {nbytes}")
            offset = member_offset(path, zf, info)
            if offset + nbytes > size:
                raise CheckpointError(f"{path}: truncated: storage {key} ends at byte {offset + nbytes}, "
                                      f"file has {size}")
            if numel == 0:
                return np.empty(0, dtype=stype.dtype)
            return np.memmap(path, dtype=stype.dtype, mode="r", offset=offset, shape=(numel,))

        try:
            obj = RestrictedUnpickler(io.BytesIO(data_pkl), load_storage, path).load()
        except CheckpointError:
            raise
        except Exception as e:  # any malformed pickle: one line, not a traceback
            raise CheckpointError(f"{path}: corrupt pickle in data.pkl ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors, got {type(obj).__name__}")
    return dict(obj)


# ----------------------------------------------------------------------------- writing
def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])                                     # BININT1
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)                          # BININT
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw                        # LONG1


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw                 # BINUNICODE


def _tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"                             # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def state_dict_pickle(specs: dict) -> bytes:
    """The data.pkl that ``torch.save`` would write for {name: (dtype name, shape)}, storage
    keys "0", "1", ... in order: the same opcodes, written out by hand (protocol 2)."""
    od = _global("collections", "OrderedDict") + b")R"                 # OrderedDict()
    out = [b"\x80\x02", od, b"("]
    for key, (name, (dt, shape)) in enumerate(specs.items()):
        shape = tuple(int(s) for s in shape)
        stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        storage = _tuple([_str("storage"), _global("torch", _STORAGE_OF[dt]), _str(str(key)), _str("cpu"),
                          _int(math.prod(shape))]) + b"Q"               # BINPERSID
        args = _tuple([storage, _int(0), _tuple(map(_int, shape)), _tuple(map(_int, stride)), b"\x89", od])
        out += [_str(name), _global("torch._utils", "_rebuild_tensor_v2"), args, b"R"]
    out.append(b"u.")                                                  # SETITEMS, STOP
    return b"".join(out)


def _aligned_info(zf: zipfile.ZipFile, name: str, size: int, align: int = 64) -> zipfile.ZipInfo:
    """A ZipInfo whose data will start on an ``align``-byte boundary (as torch.save does), by
    padding the local header's extra field."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type, info.file_size = zipfile.ZIP_STORED, size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT      # zipfile then adds a 20-byte zip64 extra
    start = zf.fp.tell() + 30 + len(name.encode()) + 4 + (20 if zip64 else 0)
    info.extra = struct.pack("<HH", 0x4246, -start % align) + b"Z" * (-start % align)   # "FB" padding
    return info


def write(path, specs: dict, fill, archive: str | None = None) -> None:
    """Write a ``torch.save``-compatible state dict without torch and without holding it in memory.

    specs: {name: (dtype name "BF16"|"F16"|"F32", shape)}; ``fill(name, f)`` writes that tensor's
    bytes (row-major, little-endian) to the file-like ``f``. ``torch.load`` reads the result."""
    archive = archive or os.path.splitext(os.path.basename(os.fspath(path)))[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(f"{archive}/data.pkl", state_dict_pickle(specs))
        zf.writestr(f"{archive}/byteorder", "little")
        for key, (name, (dt, shape)) in enumerate(specs.items()):
            nbytes = math.prod(shape) * np.dtype(STORAGES[_STORAGE_OF[dt]][0]).itemsize
            info = _aligned_info(zf, f"{archive}/data/{key}", nbytes)
            with zf.open(info, "w", force_zip64=nbytes * 1.05 > zipfile.ZIP64_LIMIT) as f:
                fill(name, f)
        zf.writestr(f"{archive}/version", "3\n")


def save(path, tensors: dict) -> None:
    """{name: array} -> a .pth file (uint16 arrays are written as bfloat16 bits)."""
    from .safetensors import dtype_name
    specs = {k: (dtype_name(v), v.shape) for k, v in tensors.items()}
    write(path, specs, lambda name, f: f.write(np.ascontiguousarray(tensors[name]).tobytes()))
