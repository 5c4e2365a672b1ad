"""openpi's msgpack-numpy wire format: numpy values as plain msgpack maps with byte-string keys.

Produces the same bytes as the `openpi_client` package (which pins numpy < 2, so it cannot be imported
here): an ndarray is `{b"__ndarray__": True, b"data": raw C-order bytes, b"dtype": dtype.str, b"shape": [...]}`,
a numpy scalar is `{b"__npgeneric__": True, b"data": python value, b"dtype": dtype.str}`. Object, void and
complex dtypes are refused (no pickle fallback).
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = ("V", "O", "c")


def pack_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in _REFUSED_KINDS:
        raise ValueError(f"unsupported dtype for msgpack-numpy: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            obj = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise object of type {type(obj).__name__} with msgpack-numpy")


def unpack_array(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in _REFUSED_KINDS:
            raise ValueError(f"unsupported dtype in msgpack-numpy message: {dtype}")
        # A read-only view on the received bytes, like openpi's: copy before writing.
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=tuple(obj[b"shape"]))
    if b"__npgeneric__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in _REFUSED_KINDS:
            raise ValueError(f"unsupported dtype in msgpack-numpy message: {dtype}")
        return dtype.type(obj[b"data"])
    return obj


packb = functools.partial(msgpack.packb, default=pack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=unpack_array)
