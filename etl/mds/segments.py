"""Copy many byte ranges out of a few Arrow buffers into one contiguous array, inside Arrow.

This is the one primitive both the columnar decoder and the encoder stand on. A column of an MDS
shard is a set of byte ranges interleaved with other columns' bytes, so it cannot be a zero-copy
Arrow binary array. We describe the ranges as an Arrow `binary_view` array (16-byte views that
may point anywhere into several buffers) and let Arrow's C++ cast to `large_binary` compact them:
one memcpy per range, no Python loop over ranges.
"""

from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

_INLINE = 12            # binary_view stores values of <= 12 bytes inside the view itself
_WINDOW = 1 << 31       # a view's offset is int32: address big buffers through 2 GiB windows


def concat_segments(
    buffers: Sequence[pa.Buffer],
    starts: np.ndarray,
    lengths: np.ndarray,
    which: Optional[np.ndarray] = None,
    *,
    window: int = _WINDOW,
) -> pa.LargeBinaryArray:
    """Element k of the result is `buffers[which[k]][starts[k] : starts[k] + lengths[k]]`.

    The result never references `buffers`: callers may reuse them afterwards.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    count = len(starts)
    which = np.zeros(count, np.int64) if which is None else np.asarray(which, dtype=np.int64)
    sizes = np.array([b.size for b in buffers], dtype=np.int64)
    if count and (
        (lengths < 0).any() or (starts < 0).any()
        or (starts + lengths > sizes[which]).any() or (lengths >= (1 << 31)).any()
    ):
        # Callers validate hostile input first; this guards memory safety if one did not.
        raise ValueError("byte range outside its buffer (or a single value of 2 GiB or more)")

    views = np.zeros((count, 4), dtype=np.int32)
    views[:, 0] = lengths
    variadic: list[pa.Buffer] = []
    first_window = np.zeros(len(buffers), dtype=np.int64)
    for b, buf in enumerate(buffers):
        first_window[b] = len(variadic)
        variadic.extend(buf.slice(w) for w in range(0, max(buf.size, 1), window))

    # The first 12 bytes of each value: all of it when inline, the 4-byte prefix otherwise.
    head = np.zeros((count, _INLINE), dtype=np.uint8)
    for b, buf in enumerate(buffers):
        rows = np.flatnonzero(which == b) if len(buffers) > 1 else slice(None)
        if buf.size == 0:
            continue
        u8 = np.frombuffer(buf, dtype=np.uint8)
        pos = starts[rows, None] + np.arange(_INLINE)
        got = u8[np.minimum(pos, buf.size - 1)]
        got[np.arange(_INLINE) >= lengths[rows, None]] = 0
        head[rows] = got
    head32 = head.view(np.int32)
    inline = lengths <= _INLINE
    views[inline, 1:] = head32[inline]
    out_of_line = ~inline
    views[out_of_line, 1] = head32[out_of_line, 0]
    views[out_of_line, 2] = first_window[which[out_of_line]] + starts[out_of_line] // window
    views[out_of_line, 3] = starts[out_of_line] % window

    array = pa.Array.from_buffers(
        pa.binary_view(), count, [None, pa.py_buffer(views), *variadic]
    )
    return array.cast(pa.large_binary())


def binary_parts(array: pa.Array) -> tuple[np.ndarray, pa.Buffer]:
    """(offsets as int64 numpy, data buffer) of a binary/string array of any width, no nulls."""
    if pa.types.is_binary_view(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.large_binary())
    elif not (pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.large_binary() if pa.types.is_binary(array.type) or
                           pa.types.is_fixed_size_binary(array.type) else pa.large_string())
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset: array.offset + len(array) + 1]
    return offsets, (data_buf if data_buf is not None else pa.py_buffer(b""))
