"""Safe wire codec: msgpack for structure, numpy arrays as raw out-of-band buffers (no pickle).

`encode(obj)` returns a msgpack header and a list of buffers. Arrays of at least ZERO_COPY_BYTES (64 KiB,
pyzmq's own copy threshold; camera images, weights) are passed as memoryviews of their own memory, so ZeroMQ
sends them zero-copy as extra frames; smaller arrays are packed into shared frames (a frame each would cost
more than the copy); tiny ones sit in the header. `decode` rebuilds arrays with `np.frombuffer` over the
received frames (no copy; the arrays are read-only views).

Supported values: dict (str/int keys), list, tuple, str, bytes, int, float, bool, None, numpy arrays and
scalars of numeric / bool / fixed-width string dtypes, ml_dtypes (bfloat16, float8 ...), and anything with
`__array__` that is not an object array (jax arrays become numpy arrays). Everything else is refused with
an error naming the offending path, and the decoder validates every dtype, shape and buffer length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

EXT_ARRAY_REF = 1  # [dtype, shape, buffer index, byte offset]: data in a separate frame
EXT_ARRAY_INLINE = 2  # [dtype, shape, bytes]: small array stored in the header
EXT_SCALAR = 3  # [dtype, bytes]: numpy scalar
EXT_TUPLE = 4  # packed list, decoded as a tuple

# Arrays smaller than this travel inside the header: a separate frame costs more than the copy.
INLINE_LIMIT_BYTES = 4096
ZERO_COPY_BYTES = 64 << 10  # arrays at least this large get their own zero-copy frame
PACK_BYTES = 4 << 20  # medium arrays are copied into shared frames of about this size
_ALIGN = 64

_ML_DTYPES = {
    name: np.dtype(getattr(ml_dtypes, name))
    for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz", "int4", "uint4")
    if hasattr(ml_dtypes, name)
}
_ALLOWED_KINDS = set("biufcSU")


class WireError(ValueError):
    """A message that cannot be accepted: malformed, truncated, oversized, unauthenticated or of a bad type."""


def dtype_to_wire(dtype: np.dtype) -> str:
    for name, known in _ML_DTYPES.items():
        if dtype == known:
            return name
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"dtype {dtype} cannot be sent (only numeric, bool, fixed-width string and ml_dtypes)")
    return dtype.str


def dtype_from_wire(text: Any) -> np.dtype:
    if not isinstance(text, str) or len(text) > 16:
        raise WireError(f"bad dtype field {text!r}")
    if text in _ML_DTYPES:
        return _ML_DTYPES[text]
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise WireError(f"unknown dtype {text!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"dtype {text!r} is not allowed on the wire")
    return dtype


def _shape_from_wire(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > 32:
        raise WireError(f"bad array shape field {shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**48 for d in shape):
        raise WireError(f"bad array shape {shape!r}")
    return tuple(shape)


def _expected_nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * dtype.itemsize


def encode(
    obj: Any, inline_limit: int = INLINE_LIMIT_BYTES, zero_copy_bytes: int = ZERO_COPY_BYTES
) -> tuple[bytes, list[Any]]:
    """Encode `obj` as (msgpack header, out-of-band buffers). Raises WireError naming an unsupported value."""
    buffers: list[Any] = []
    pack: list[Any] = []  # pieces of the open shared frame: (array bytes, padding) ...
    pack_state = {"index": -1, "size": 0}

    def close_pack() -> None:
        if pack:
            buffers[pack_state["index"]] = b"".join(pack)
            pack.clear()
        pack_state["index"], pack_state["size"] = -1, 0

    def add_to_pack(raw: memoryview) -> tuple[int, int]:
        if pack_state["index"] < 0 or pack_state["size"] + raw.nbytes > PACK_BYTES:
            close_pack()
            buffers.append(b"")
            pack_state["index"] = len(buffers) - 1
        offset = pack_state["size"]
        pad = -raw.nbytes % _ALIGN  # keep every array in the frame 64-byte aligned
        pack.append(raw)
        if pad:
            pack.append(bytes(pad))
        pack_state["size"] += raw.nbytes + pad
        return pack_state["index"], offset

    def default(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return _encode_array(value)
        if isinstance(value, np.generic):
            arr = np.asarray(value)
            return msgpack.ExtType(EXT_SCALAR, msgpack.packb([dtype_to_wire(arr.dtype), arr.tobytes()]))
        if isinstance(value, tuple):
            return msgpack.ExtType(EXT_TUPLE, _pack(list(value)))
        if isinstance(value, dict):  # dict subclasses (OrderedDict, FrozenDict-like mappings)
            return dict(value)
        if isinstance(value, list):
            return list(value)
        for base in (bool, int, float, str, bytes):  # subclasses such as IntEnum or str enums
            if isinstance(value, base):
                return base(value)
        if hasattr(value, "__array__") and not isinstance(value, type):
            arr = np.asarray(value)
            if arr.dtype == object:
                raise WireError(f"value of type {type(value).__name__} converts to an object array")
            return _encode_array(arr)
        raise WireError(f"value of type {type(value).__name__} cannot be sent with the safe wire format")

    def _encode_array(arr: np.ndarray) -> msgpack.ExtType:
        wire_dtype = dtype_to_wire(arr.dtype)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        shape = list(arr.shape)
        if arr.nbytes < inline_limit:
            return msgpack.ExtType(EXT_ARRAY_INLINE, msgpack.packb([wire_dtype, shape, arr.tobytes()]))
        raw = memoryview(arr.reshape(-1).view(np.uint8))
        if arr.nbytes >= zero_copy_bytes:
            buffers.append(raw)
            index, offset = len(buffers) - 1, 0
        else:
            index, offset = add_to_pack(raw)
        return msgpack.ExtType(EXT_ARRAY_REF, msgpack.packb([wire_dtype, shape, index, offset]))

    def _pack(value: Any) -> bytes:
        try:
            return msgpack.packb(value, default=default, strict_types=True, use_bin_type=True)
        except WireError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise WireError(f"cannot encode value: {exc}") from exc

    header = _pack(obj)
    close_pack()
    return header, buffers


def decode(header: bytes | memoryview, buffers: Sequence[memoryview | bytes]) -> Any:
    """Inverse of `encode`. Validates every array; raises WireError on anything malformed."""
    used = [False] * len(buffers)

    def ext_hook(code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(_unpack(data))
        try:
            fields = msgpack.unpackb(data, raw=False)
        except Exception as exc:
            raise WireError(f"malformed array record: {exc}") from exc
        if code == EXT_SCALAR:
            if not (isinstance(fields, list) and len(fields) == 2 and isinstance(fields[1], bytes)):
                raise WireError("malformed scalar record")
            dtype = dtype_from_wire(fields[0])
            if len(fields[1]) != dtype.itemsize:
                raise WireError(f"scalar of dtype {dtype} has {len(fields[1])} bytes")
            return np.frombuffer(fields[1], dtype=dtype)[0]
        expected_fields = 3 if code == EXT_ARRAY_INLINE else 4
        if code not in (EXT_ARRAY_INLINE, EXT_ARRAY_REF) or not (
            isinstance(fields, list) and len(fields) == expected_fields
        ):
            raise WireError(f"unknown or malformed extension record (code {code})")
        dtype = dtype_from_wire(fields[0])
        shape = _shape_from_wire(fields[1])
        if code == EXT_ARRAY_INLINE:
            raw = fields[2]
            if not isinstance(raw, bytes):
                raise WireError("inline array payload is not bytes")
            expected = _expected_nbytes(dtype, shape)
            if len(raw) != expected:
                raise WireError(f"array {dtype}{list(shape)} needs {expected} bytes, record has {len(raw)}")
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
        index, offset = fields[2], fields[3]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(buffers):
            raise WireError(f"array refers to buffer {index!r} but the message has {len(buffers)} buffers")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise WireError(f"bad array offset {offset!r}")
        used[index] = True
        expected = _expected_nbytes(dtype, shape)
        frame = buffers[index]
        if offset + expected > len(frame):
            raise WireError(
                f"array {dtype}{list(shape)} needs bytes {offset}..{offset + expected} of a {len(frame)}-byte frame"
                " (truncated?)"
            )
        return np.frombuffer(frame, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)

    def _unpack(data: bytes | memoryview) -> Any:
        try:
            return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False, use_list=True)
        except WireError:
            raise
        except Exception as exc:  # msgpack raises many types (ExtraData, StackError, ValueError, TypeError...)
            raise WireError(f"malformed message header: {type(exc).__name__}: {exc}") from exc

    obj = _unpack(header)
    if not all(used):
        raise WireError(f"message carries {used.count(False)} unreferenced buffer frame(s)")
    return obj


def nbytes_of(header: bytes, buffers: Sequence[memoryview | bytes]) -> int:
    return len(header) + sum(len(b) for b in buffers)
