"""openpi's msgpack-numpy wire format: numpy values as plain msgpack maps with byte-string keys.

Produces the same bytes as the `openpi_client` package (which pins numpy < 2, so it cannot be imported
here): an ndarray is `{b"__ndarray__": True, b"data": raw C-order bytes, b"dtype": dtype.str, b"shape": [...]}`,
a numpy scalar is `{b"__npgeneric__": True, b"data": python value, b"dtype": dtype.str}`. `dtype.str` carries
the byte order ("<i4", ">f8", "|u1"), so arrays of any byte order and layout (Fortran order, strided views)
arrive with the same values. Object, void and complex dtypes are refused (no pickle fallback).

`unpackb` raises `WireFormatError` (a ValueError) whose text says what was wrong with the frame.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = ("V", "O", "c")
MAX_NESTING = 1024  # msgpack's own unpacker stack: deeper frames fail with an empty StackError


class WireFormatError(ValueError):
    """A frame that is not valid openpi msgpack-numpy; the text names the problem."""


def pack_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in _REFUSED_KINDS:
        raise ValueError(f"unsupported dtype for msgpack-numpy: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        # tobytes() is C order whatever the layout, and dtype.str keeps the array's own byte order.
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise object of type {type(obj).__name__} with msgpack-numpy")


def _dtype(obj: dict, what: str) -> np.dtype:
    raw = obj.get(b"dtype")
    if not isinstance(raw, str | bytes):
        raise WireFormatError(f"{what} needs a dtype string, got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw)
    except TypeError:
        raise WireFormatError(f"{what} has an unknown dtype {raw!r}") from None
    if dtype.kind in _REFUSED_KINDS:
        raise WireFormatError(f"unsupported dtype in msgpack-numpy message: {dtype}")
    return dtype


def unpack_array(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _dtype(obj, "ndarray")
        data, shape = obj.get(b"data"), obj.get(b"shape")
        if not isinstance(data, bytes):
            raise WireFormatError(f"ndarray data must be bytes, got {type(data).__name__}")
        if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise WireFormatError(f"ndarray shape must be a list of non-negative ints, got {str(shape)[:80]}")
        need = dtype.itemsize * int(np.prod(shape, dtype=object))
        if need != len(data):
            raise WireFormatError(f"ndarray {dtype.str} {list(shape)} needs {need} bytes of data, got {len(data)}")
        # A read-only view on the received bytes, like openpi's (the env copies what it hands out).
        return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj, "numpy scalar")
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as err:
            raise WireFormatError(f"numpy scalar of dtype {dtype.str}: {err}") from None
    return obj


packb = functools.partial(msgpack.packb, default=pack_array)


def unpackb(frame: bytes) -> Any:
    n = len(frame)
    try:
        return msgpack.unpackb(frame, object_hook=unpack_array)
    except WireFormatError:
        raise
    except msgpack.StackError:
        raise WireFormatError(f"msgpack nesting deeper than {MAX_NESTING} levels") from None
    except msgpack.FormatError:
        raise WireFormatError(f"not msgpack: the {n}-byte frame holds a byte that is no msgpack type") from None
    except msgpack.ExtraData as err:
        extra = len(err.extra)
        raise WireFormatError(f"{n - extra} bytes of msgpack followed by {extra} extra bytes") from None
    except ValueError as err:  # "incomplete input" and friends
        raise WireFormatError(f"undecodable msgpack in a {n}-byte frame: {err or type(err).__name__}") from None
    except Exception as err:  # e.g. unhashable map keys: still the frame's fault, never an empty reason
        raise WireFormatError(f"undecodable msgpack ({type(err).__name__}: {err})") from None
