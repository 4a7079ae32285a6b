"""MDS column encodings: a registry mapping each encoding name to its Arrow type and codecs.

Decoding is columnar: an encoding turns the byte ranges of one column of a whole shard into one
Arrow array (`decode`). Where the layout allows it (every encoding but dynamic `ndarray`), no
Python code runs per sample. A sample whose bytes are malformed is reported as a problem (a row
mask plus a message) and the shard decoder nulls that cell; it never raises for one sample.

Encoding is columnar where the Arrow type allows (`encode` returns pieces that the writer copies
into place in one pass) and per value otherwise (`encode_value`, same semantics as the reference
writer, including its rule that a value which is already `bytes` is stored as-is).

`schemas/mds_arrow_types.md` documents the mapping (a test keeps it equal to `arrow_type`).
"""

import json
import pickle
from dataclasses import dataclass, field
from decimal import Decimal
from io import BytesIO
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.mds.segments import binary_parts, concat_segments

Problems = list[tuple[np.ndarray, str]]  # (row mask, message) pairs


@dataclass
class Segments:
    """Where one column's values sit: element k is buffers[which[k]][starts[k]:+lengths[k]]."""

    buffers: list[pa.Buffer]
    starts: np.ndarray
    lengths: np.ndarray
    which: Optional[np.ndarray] = None
    _u8: list = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.starts)

    def copy_out(self, starts=None, lengths=None, which=None) -> pa.LargeBinaryArray:
        return concat_segments(
            self.buffers,
            self.starts if starts is None else starts,
            self.lengths if lengths is None else lengths,
            self.which if which is None else which,
        )

    def read_u32(self, at: np.ndarray, which: Optional[np.ndarray] = None) -> np.ndarray:
        """Little-endian u32 at each position (callers keep `at + 4` inside the buffer)."""
        at = np.asarray(at, dtype=np.int64)
        which = self.buffer_ids() if which is None else which
        out = np.zeros(len(at), dtype=np.int64)
        if not self._u8:
            self._u8.extend(np.frombuffer(b, dtype=np.uint8) for b in self.buffers)
        for b, u8 in enumerate(self._u8):
            rows = np.flatnonzero(which == b)
            if len(rows) and len(u8):
                raw = u8[np.minimum(at[rows, None] + np.arange(4), len(u8) - 1)]
                out[rows] = np.ascontiguousarray(raw).view("<u4")[:, 0]
        return out

    def sub(self, starts, lengths, which=None) -> "Segments":
        return Segments(self.buffers, starts, lengths, which, self._u8)

    def buffer_ids(self) -> np.ndarray:
        return np.zeros(len(self), np.int64) if self.which is None else self.which


@dataclass
class Pieces:
    """Encoded payloads: row i is the concatenation of its `width` pieces, in order."""

    buffers: list[pa.Buffer]
    which: np.ndarray    # (rows, width)
    starts: np.ndarray   # (rows, width)
    lengths: np.ndarray  # (rows, width)

    @classmethod
    def single(cls, buffer: pa.Buffer, starts: np.ndarray, lengths: np.ndarray) -> "Pieces":
        rows = len(starts)
        return cls([buffer], np.zeros((rows, 1), np.int64), np.asarray(starts).reshape(rows, 1),
                   np.asarray(lengths).reshape(rows, 1))

    @classmethod
    def from_values(cls, values: list[bytes]) -> "Pieces":
        offsets, data = binary_parts(pa.array(values, type=pa.large_binary()))
        return cls.single(data, offsets[:-1], np.diff(offsets))


class EncodingError(ValueError):
    """A value that cannot be stored with its column's encoding."""


# --------------------------------------------------------------------------------------------
# Base classes


class Encoding:
    name: str = ""
    fixed_size: Optional[int] = None
    safe: bool = True
    image_files: bool = False  # values are PNG/JPEG files (or lists of them)

    @property
    def arrow_type(self) -> pa.DataType:
        raise NotImplementedError

    def decode(self, seg: Segments) -> tuple[pa.Array, Problems]:
        raise NotImplementedError

    def encode(self, array: pa.Array) -> Optional[Pieces]:
        """Columnar encode, or None when this array's type needs the per-value path."""
        return None

    def encode_value(self, value: Any) -> bytes:
        raise NotImplementedError

    def check_size(self, pieces: Pieces, column: str) -> None:
        if self.fixed_size is not None:
            sizes = pieces.lengths.sum(axis=1)
            bad = np.flatnonzero(sizes != self.fixed_size)
            if len(bad):
                raise EncodingError(
                    f"column {column!r} ({self.name}): row {int(bad[0])} encodes to "
                    f"{int(sizes[bad[0]])} bytes, the encoding's fixed size is {self.fixed_size}")


def _is_binary_like(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


def _is_string_like(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _python_values(array: pa.Array) -> list:
    if isinstance(array.type, pa.BaseExtensionType) and hasattr(array, "to_numpy"):
        try:
            return list(array.to_numpy(zero_copy_only=False))
        except (TypeError, NotImplementedError, pa.ArrowException):
            pass
    return array.to_pylist()


def _to_large_string(binary: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Validate UTF-8 in C++; only when that fails, find the offending rows one by one."""
    try:
        return binary.cast(pa.large_string()), np.zeros(len(binary), bool)
    except pa.ArrowInvalid:
        pass
    bad = np.zeros(len(binary), bool)
    for i, value in enumerate(binary.to_pylist()):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            bad[i] = True
    cleaned = pc.if_else(pa.array(bad), pa.scalar(b"", pa.large_binary()), binary)
    return cleaned.cast(pa.large_string()), bad


# --------------------------------------------------------------------------------------------
# Byte strings: bytes, jpeg, png, pkl; and UTF-8 text: str, json, str_decimal


class RawBytes(Encoding):
    """Values kept as their stored bytes. Images stay encoded: pixels are the next stage's job."""

    arrow_type = pa.large_binary()

    def __init__(self, name: str, *, safe: bool = True):
        self.name, self.safe = name, safe
        self.image_files = name in ("jpeg", "png")

    def decode(self, seg):
        return seg.copy_out(), []

    def encode(self, array):
        if not _is_binary_like(array.type):
            return None
        offsets, data = binary_parts(array)
        return Pieces.single(data, offsets[:-1], np.diff(offsets))

    def encode_value(self, value):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if self.name == "pkl":
            return pickle.dumps(value)
        if self.name in ("jpeg", "png"):
            return _encode_image(value, self.name)
        raise EncodingError(f"{self.name} expects bytes, got {type(value).__name__}")


class Text(Encoding):
    """UTF-8 text. `json` stays JSON text (parsing is the consumer's choice, per row)."""

    arrow_type = pa.large_string()

    def __init__(self, name: str):
        self.name = name

    def decode(self, seg):
        array, bad = _to_large_string(seg.copy_out())
        return array, [(bad, "not valid UTF-8")] if bad.any() else []

    def encode(self, array):
        t = array.type
        if self.name == "str_decimal" and pa.types.is_decimal(t):
            array = array.cast(pa.large_string())
        elif not (_is_string_like(t) or (self.name == "str" and _is_binary_like(t))):
            return None
        offsets, data = binary_parts(array)
        return Pieces.single(data, offsets[:-1], np.diff(offsets))

    def encode_value(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if self.name == "json":
            if isinstance(value, np.ndarray):
                value = value.tolist()
            return json.dumps(value).encode("utf-8")
        if self.name == "str_decimal" and not isinstance(value, (Decimal, str)):
            raise EncodingError(f"str_decimal expects Decimal, got {type(value).__name__}")
        if self.name == "str" and not isinstance(value, str):
            raise EncodingError(f"str expects str, got {type(value).__name__}")
        return str(value).encode("utf-8")


class NumberText(Encoding):
    """`str_int` / `str_float`: numbers stored as their decimal text, read back as numbers."""

    def __init__(self, name: str, arrow_type: pa.DataType, parse):
        self.name, self._arrow_type, self._parse = name, arrow_type, parse

    @property
    def arrow_type(self):
        return self._arrow_type

    def decode(self, seg):
        text, bad_utf8 = _to_large_string(seg.copy_out())
        problems = [(bad_utf8, "not valid UTF-8")] if bad_utf8.any() else []
        if not bad_utf8.any():
            try:
                return text.cast(self._arrow_type), problems
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        # Only when Arrow's parser refuses something: find the rows, with the reference's parser.
        values, bad = [], np.zeros(len(seg), bool)
        for i, s in enumerate(text.to_pylist()):
            try:
                values.append(None if bad_utf8[i] else self._parse(s))
            except (ValueError, OverflowError, TypeError):
                values.append(None)
                bad[i] = True
        if bad.any():
            problems.append((bad, f"not a valid {self.name} value for {self._arrow_type}"))
        return pa.array(values, type=self._arrow_type), problems

    def encode(self, array):
        t = array.type
        if self.name == "str_int" and pa.types.is_integer(t):
            array = array.cast(pa.large_string())
        elif self.name == "str_float" and pa.types.is_floating(t):
            array = array.cast(pa.float64()).cast(pa.large_string())
        elif not _is_string_like(t):
            return None
        offsets, data = binary_parts(array)
        return Pieces.single(data, offsets[:-1], np.diff(offsets))

    def encode_value(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        number = int(value) if self.name == "str_int" else float(value)
        return str(number).encode("utf-8")


def _parse_int64(text: str) -> int:
    value = int(text)
    if not -(1 << 63) <= value < (1 << 63):
        raise OverflowError("does not fit int64")
    return value


# --------------------------------------------------------------------------------------------
# Fixed-size numbers: int, uint8..uint64, int8..int64, float16/32/64


_NUMPY_TO_ARROW = {
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float16": pa.float16(), "float32": pa.float32(), "float64": pa.float64(),
}


def _values_from_bytes(data: pa.LargeBinaryArray, arrow_type: pa.DataType, count: int) -> pa.Array:
    data_buffer = data.buffers()[2] or pa.py_buffer(b"")
    return pa.Array.from_buffers(arrow_type, count, [None, data_buffer])


def _flat_values(array: pa.Array, per_row: int) -> pa.Array:
    """Flatten nested lists / tensors to their primitive values, checking each row has
    exactly `per_row` of them (C order)."""
    rows = len(array)
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    row_offsets = np.arange(rows + 1, dtype=np.int64)
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) \
            or pa.types.is_fixed_size_list(array.type):
        if array.null_count:
            raise EncodingError("null inside an ndarray value")
        if pa.types.is_fixed_size_list(array.type):
            level = np.arange(len(array) + 1, dtype=np.int64) * array.type.list_size
        else:
            level = np.asarray(array.offsets, dtype=np.int64)
            level = level - level[0]
        row_offsets = level[row_offsets]
        array = array.flatten()
        if isinstance(array.type, pa.BaseExtensionType):
            array = array.storage
    counts = np.diff(row_offsets)
    if len(counts) and (counts != per_row).any():
        bad = int(np.flatnonzero(counts != per_row)[0])
        raise EncodingError(f"row {bad} holds {int(counts[bad])} values, the fixed shape needs {per_row}")
    if array.null_count:
        raise EncodingError("null inside an ndarray value")
    return array


class Scalar(Encoding):
    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, np.dtype(dtype)
        self.fixed_size = self.dtype.itemsize

    @property
    def arrow_type(self):
        return _NUMPY_TO_ARROW[self.dtype.name]

    def decode(self, seg):
        return _values_from_bytes(seg.copy_out(), self.arrow_type, len(seg)), []

    def encode(self, array):
        t = array.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            return None
        if array.null_count:
            raise EncodingError(f"{self.name}: null values cannot be stored")
        array = array.cast(self.arrow_type)  # safe cast: overflow raises
        data = array.buffers()[1].slice(array.offset * self.fixed_size, len(array) * self.fixed_size)
        starts = np.arange(len(array), dtype=np.int64) * self.fixed_size
        return Pieces.single(data, starts, np.full(len(array), self.fixed_size))

    def encode_value(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if self.name == "int" and not isinstance(value, (int, np.integer)):
            raise EncodingError(f"int expects an integer, got {type(value).__name__}")
        return self.dtype.type(value).tobytes()


# --------------------------------------------------------------------------------------------
# ndarray, ndarray:<dtype>, ndarray:<dtype>:<shape>

_DTYPE_CODES = {
    8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
    34: "float32", 64: "uint64", 65: "int64", 66: "float64",
}
_CODE_OF_DTYPE = {v: k for k, v in _DTYPE_CODES.items()}
_SHAPE_DTYPES = {0: np.dtype("<u1"), 1: np.dtype("<u2"), 2: np.dtype("<u4"), 3: np.dtype("<u8")}


class NDArray(Encoding):
    """Fixed dtype+shape -> `pa.fixed_shape_tensor` (Ray Data reads it as a tensor column).
    Dynamic shape -> struct of shape + values; dynamic dtype too -> struct of dtype, shape, bytes."""

    def __init__(self, name: str, dtype: Optional[str], shape: Optional[tuple[int, ...]]):
        self.name, self.dtype, self.shape = name, dtype, shape
        if dtype is not None and shape is not None:
            self.fixed_size = int(np.prod(shape)) * np.dtype(dtype).itemsize

    @property
    def arrow_type(self):
        if self.fixed_size is not None:
            return pa.fixed_shape_tensor(_NUMPY_TO_ARROW[self.dtype], list(self.shape))
        if self.dtype is not None:
            return pa.struct([("shape", pa.list_(pa.int64())),
                              ("values", pa.large_list(_NUMPY_TO_ARROW[self.dtype]))])
        return pa.struct([("dtype", pa.string()), ("shape", pa.list_(pa.int64())),
                          ("data", pa.large_binary())])

    def decode(self, seg):
        if self.fixed_size is not None:
            count = int(np.prod(self.shape))
            values = _values_from_bytes(seg.copy_out(), _NUMPY_TO_ARROW[self.dtype], len(seg) * count)
            storage = pa.FixedSizeListArray.from_arrays(values, count)
            return pa.ExtensionArray.from_storage(self.arrow_type, storage), []
        return self._decode_dynamic(seg)

    def _decode_dynamic(self, seg):
        # The header (dtype byte, ndim/shape) varies per sample, so parse it per sample; the
        # values themselves are still copied out in one pass.
        rows = len(seg)
        which = seg.buffer_ids()
        dtypes, shapes = [], []
        data_starts = np.zeros(rows, np.int64)
        data_lengths = np.zeros(rows, np.int64)
        bad = np.zeros(rows, bool)
        reasons: dict[str, np.ndarray] = {}

        def fail(i, why):
            bad[i] = True
            reasons.setdefault(why, np.zeros(rows, bool))[i] = True

        for i in range(rows):
            start, length = int(seg.starts[i]), int(seg.lengths[i])
            head = seg.buffers[which[i]].slice(start, min(length, 1 + 1 + 63 * 8)).to_pybytes()
            at, dtype = 0, self.dtype
            if dtype is None:
                if not head:
                    fail(i, "empty ndarray value"); dtypes.append(None); shapes.append(None); continue
                dtype = _DTYPE_CODES.get(head[0])
                at = 1
                if dtype is None:
                    fail(i, f"unknown ndarray dtype code {head[0]}"); dtypes.append(None); shapes.append(None); continue
            if at >= len(head):
                fail(i, "ndarray header truncated"); dtypes.append(dtype); shapes.append(None); continue
            ndim, shape_code = head[at] >> 2, head[at] & 3
            at += 1
            width = _SHAPE_DTYPES[shape_code].itemsize
            if ndim == 0 or at + ndim * width > len(head):
                fail(i, "ndarray shape header truncated or zero-dimensional")
                dtypes.append(dtype); shapes.append(None); continue
            shape = np.frombuffer(head, _SHAPE_DTYPES[shape_code], ndim, at).astype(np.int64).tolist()
            at += ndim * width
            itemsize = np.dtype(dtype).itemsize
            if min(shape) <= 0 or int(np.prod(shape, dtype=object)) * itemsize != length - at:
                fail(i, f"ndarray shape {shape} x {dtype} does not match its {length - at} data bytes")
                dtypes.append(dtype); shapes.append(None); continue
            dtypes.append(dtype)
            shapes.append(shape)
            data_starts[i], data_lengths[i] = start + at, length - at
        data = seg.copy_out(data_starts, data_lengths, which)
        shape_array = pa.array([s if s is not None else [] for s in shapes], pa.list_(pa.int64()))
        if self.dtype is None:
            array = pa.StructArray.from_arrays(
                [pa.array([d or "" for d in dtypes], pa.string()), shape_array, data],
                names=["dtype", "shape", "data"])
        else:
            itemsize = np.dtype(self.dtype).itemsize
            offsets, _ = binary_parts(data)
            values = _values_from_bytes(data, _NUMPY_TO_ARROW[self.dtype], int(offsets[-1]) // itemsize)
            lists = pa.LargeListArray.from_arrays(pa.array(offsets // itemsize, pa.int64()), values)
            array = pa.StructArray.from_arrays([shape_array, lists], names=["shape", "values"])
        return array, [(mask, why) for why, mask in reasons.items()]

    def encode(self, array):
        if self.fixed_size is None:
            return None
        t = array.type.storage_type if isinstance(array.type, pa.BaseExtensionType) else array.type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            return None
        values = _flat_values(array, int(np.prod(self.shape)))
        values = values.cast(_NUMPY_TO_ARROW[self.dtype])
        data = values.buffers()[1].slice(values.offset * values.type.byte_width,
                                         len(values) * values.type.byte_width)
        starts = np.arange(len(array), dtype=np.int64) * self.fixed_size
        return Pieces.single(data, starts, np.full(len(array), self.fixed_size))

    def encode_value(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, dict):  # the struct forms read_mds produces
            dtype = value.get("dtype") or self.dtype
            if "values" in value:
                value = np.asarray(value["values"], dtype=dtype).reshape(value["shape"])
            else:
                value = np.frombuffer(value["data"], dtype=dtype).reshape(value["shape"])
        value = np.asarray(value)
        if self.dtype is not None and value.dtype != np.dtype(self.dtype):
            value = value.astype(self.dtype)
        if value.dtype.name not in _CODE_OF_DTYPE:
            raise EncodingError(f"ndarray dtype {value.dtype} is not storable in MDS")
        if value.ndim == 0 or value.size == 0:
            raise EncodingError("ndarray values need at least one axis and one element")
        parts = []
        if self.dtype is None:
            parts.append(bytes([_CODE_OF_DTYPE[value.dtype.name]]))
        if self.shape is None:
            shape = np.array(value.shape, np.int64)
            code = next(c for c, d in _SHAPE_DTYPES.items() if shape.max() < (1 << (8 * d.itemsize))
                        or c == 3)
            parts.append(bytes([(value.ndim << 2) | code]))
            parts.append(shape.astype(_SHAPE_DTYPES[code]).tobytes())
        elif tuple(value.shape) != tuple(self.shape):
            raise EncodingError(f"ndarray shape {value.shape} != column shape {self.shape}")
        parts.append(np.ascontiguousarray(value).tobytes())
        return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Images: pil (raw pixels + header), lists of images, jpeg_array


_PIL_TYPE = pa.struct([("width", pa.uint32()), ("height", pa.uint32()), ("mode", pa.string()),
                       ("data", pa.large_binary())])
_MAX_MODE_LENGTH = 16


def _pil_raw_size(mode: str, width: np.ndarray, height: np.ndarray):
    """Expected raw byte count per sample for a PIL mode, or None for an unknown mode."""
    from PIL import ImageMode

    try:
        descriptor = ImageMode.getmode(mode)
    except KeyError:
        return None
    if mode == "1":  # one bit per pixel, rows padded to whole bytes
        return ((width + 7) // 8) * height
    return width * height * (np.dtype(descriptor.typestr).itemsize * len(descriptor.bands))


def _decode_pil(seg: Segments) -> tuple[pa.StructArray, Problems]:
    count = len(seg)
    which = seg.buffer_ids()
    ok = seg.lengths >= 12
    starts = np.where(ok, seg.starts, 0)
    width = seg.read_u32(starts, which)
    height = seg.read_u32(starts + 4, which)
    mode_length = seg.read_u32(starts + 8, which)
    ok &= mode_length <= np.minimum(seg.lengths - 12, _MAX_MODE_LENGTH)
    mode_length = np.where(ok, mode_length, 0)
    modes = seg.copy_out(starts + 12, mode_length, which)
    data_length = np.where(ok, seg.lengths - 12 - mode_length, 0)
    data = seg.copy_out(starts + 12 + mode_length, data_length, which)
    problems: Problems = [(~ok, "pil header truncated or mode name too long")]

    encoded = pc.dictionary_encode(modes)
    expected = np.full(count, -1, dtype=np.int64)
    indices = np.asarray(encoded.indices)
    for code, mode_bytes in enumerate(encoded.dictionary.to_pylist()):
        rows = indices == code
        size = None
        try:
            size = _pil_raw_size(mode_bytes.decode("ascii"), width[rows], height[rows])
        except UnicodeDecodeError:
            pass
        if size is None:
            problems.append((rows & ok, f"unknown PIL mode {mode_bytes[:_MAX_MODE_LENGTH]!r}"))
        else:
            expected[rows] = size  # (w * h) < 2**64 / 16 is checked below before trusting it
    too_big = (width.astype(np.float64) * height * 16) >= 2.0 ** 62
    mismatch = ok & (expected >= 0) & ((expected != data_length) | too_big)
    if mismatch.any():
        first = int(np.flatnonzero(mismatch)[0])
        problems.append((mismatch, f"pil header claims {int(width[first])}x{int(height[first])} "
                                   f"pixels but carries {int(data_length[first])} bytes"))
    mode_text = pc.if_else(pa.array(ok), modes, pa.scalar(b"", pa.large_binary()))
    array = pa.StructArray.from_arrays(
        [pa.array(width, pa.uint32()), pa.array(height, pa.uint32()),
         mode_text.cast(pa.string(), safe=False), data],
        fields=list(_PIL_TYPE))
    return array, [(m, why) for m, why in problems if m.any()]


def _encode_image(value: Any, name: str) -> bytes:
    from PIL import Image

    if isinstance(value, dict) and name == "pil":
        header = np.array([value["width"], value["height"], len(value["mode"])], np.uint32)
        return header.tobytes() + value["mode"].encode("utf-8") + bytes(value["data"])
    if not isinstance(value, Image.Image):
        raise EncodingError(f"{name} expects a PIL image or bytes, got {type(value).__name__}")
    if name == "pil":
        mode = value.mode.encode("utf-8")
        header = np.array([value.width, value.height, len(mode)], np.uint32)
        return header.tobytes() + mode + value.tobytes()
    out = BytesIO()
    value.save(out, format="JPEG" if name == "jpeg" else "PNG")
    return out.getvalue()


class Pil(Encoding):
    name = "pil"
    arrow_type = _PIL_TYPE

    def decode(self, seg):
        return _decode_pil(seg)

    def encode_value(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        return _encode_image(value, "pil")


class ImageList(Encoding):
    """jpeg_array: [u32 n][u32 size * n][elements]; list[x]: [u32 0][u32 n][u32 size * n][elements].

    Decodes to list<large_binary> (or list<pil struct> for list[pil]) without a per-sample loop.
    """

    def __init__(self, name: str, element: str, header_words: int):
        self.name, self.element, self.header_words = name, element, header_words
        self.image_files = element != "pil"

    @property
    def arrow_type(self):
        return pa.list_(_PIL_TYPE if self.element == "pil" else pa.large_binary())

    def decode(self, seg):
        rows = len(seg)
        which = seg.buffer_ids()
        head = 4 * self.header_words
        ok = seg.lengths >= head
        counts = np.where(ok, seg.read_u32(seg.starts + head - 4, which), 0)
        ok &= head + 4 * counts <= seg.lengths
        counts = np.where(ok, counts, 0)
        problems: Problems = []
        if (~ok).any():
            problems.append((~ok, f"{self.name} header truncated or claims more elements than its bytes hold"))

        def element_layout(counts):
            first = np.concatenate([[0], np.cumsum(counts)])
            owner = np.repeat(np.arange(rows), counts)
            position = np.arange(first[-1]) - first[owner]
            sizes = seg.read_u32(seg.starts[owner] + head + 4 * position, which[owner])
            return first, owner, position, sizes

        first, owner, position, sizes = element_layout(counts)
        totals = np.bincount(owner, weights=sizes, minlength=rows).astype(np.int64)
        mismatch = ok & (head + 4 * counts + totals != seg.lengths)
        if mismatch.any():
            problems.append((mismatch, f"{self.name} element sizes do not add up to the value's bytes"))
            counts = np.where(mismatch, 0, counts)
            first, owner, position, sizes = element_layout(counts)
        within = np.concatenate([[0], np.cumsum(sizes)])
        element_starts = (seg.starts[owner] + head + 4 * counts[owner]
                          + within[:-1] - within[first[owner]])
        elements = seg.sub(element_starts, sizes, which[owner])
        if self.element == "pil":
            values, element_problems = _decode_pil(elements)
            for mask, why in element_problems:
                row_mask = np.zeros(rows, bool)
                row_mask[owner[mask]] = True
                problems.append((row_mask, why))
        else:
            values = elements.copy_out()
        array = pa.ListArray.from_arrays(pa.array(first, pa.int32()), values)
        return array, problems

    def encode(self, array):
        t = array.type
        if self.element == "pil" or not (pa.types.is_list(t) or pa.types.is_large_list(t)
                                         or pa.types.is_fixed_size_list(t)):
            return None
        if not _is_binary_like(t.value_type):
            return None
        if array.null_count:
            raise EncodingError(f"{self.name}: null lists cannot be stored")
        rows = len(array)
        if pa.types.is_fixed_size_list(t):
            counts = np.full(rows, t.list_size, np.int64)
        else:
            list_offsets = np.asarray(array.offsets, dtype=np.int64)
            counts = np.diff(list_offsets)
        flat = array.flatten()
        if flat.null_count:
            raise EncodingError(f"{self.name}: null elements cannot be stored")
        value_offsets, data = binary_parts(flat)
        first = np.concatenate([[0], np.cumsum(counts)])
        sizes = np.diff(value_offsets)
        # One header per row: [0 reserved][n][sizes...], built in one uint32 buffer.
        words = self.header_words + counts
        header_first = np.concatenate([[0], np.cumsum(words)])
        header = np.zeros(header_first[-1], dtype="<u4")
        header[header_first[:-1] + self.header_words - 1] = counts
        owner = np.repeat(np.arange(rows), counts)
        header[header_first[owner] + self.header_words + (np.arange(first[-1]) - first[owner])] = sizes
        which = np.tile(np.array([0, 1]), (rows, 1))
        starts = np.stack([header_first[:-1] * 4, value_offsets[first[:-1]]], axis=1)
        lengths = np.stack([words * 4, value_offsets[first[1:]] - value_offsets[first[:-1]]], axis=1)
        return Pieces([pa.py_buffer(header), data], which, starts, lengths)

    def encode_value(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        elements = [bytes(v) if isinstance(v, (bytes, bytearray, memoryview))
                    else _encode_image(v, self.element) for v in value]
        header = [0] * (self.header_words - 1) + [len(elements)] + [len(e) for e in elements]
        return np.array(header, np.uint32).tobytes() + b"".join(elements)


# --------------------------------------------------------------------------------------------
# Registry


def _ndarray(args: list[str]) -> Encoding:
    if len(args) > 2:
        raise ValueError("ndarray takes at most a dtype and a shape")
    dtype = args[0] if args else None
    if dtype is not None and dtype not in _CODE_OF_DTYPE:
        raise ValueError(f"ndarray dtype {dtype!r}; allowed: {sorted(_CODE_OF_DTYPE)}")
    shape = None
    if len(args) == 2:
        shape = tuple(int(d) for d in args[1].split(","))
        if any(d < 1 for d in shape):
            raise ValueError(f"ndarray shape {shape} has a dimension below 1")
    return NDArray(":".join(["ndarray", *args]), dtype, shape)


ENCODINGS = {
    "bytes": lambda: RawBytes("bytes"),
    "jpeg": lambda: RawBytes("jpeg"),
    "png": lambda: RawBytes("png"),
    "pkl": lambda: RawBytes("pkl", safe=False),
    "str": lambda: Text("str"),
    "json": lambda: Text("json"),
    "str_decimal": lambda: Text("str_decimal"),
    "str_int": lambda: NumberText("str_int", pa.int64(), _parse_int64),
    "str_float": lambda: NumberText("str_float", pa.float64(), float),
    "int": lambda: Scalar("int", "int64"),
    **{name: (lambda name=name: Scalar(name, name)) for name in _NUMPY_TO_ARROW},
    "pil": Pil,
    "jpeg_array": lambda: ImageList("jpeg_array", "jpeg", 1),
    "jpegarray": lambda: ImageList("jpegarray", "jpeg", 1),
    "list[pil]": lambda: ImageList("list[pil]", "pil", 2),
    "list[jpeg]": lambda: ImageList("list[jpeg]", "jpeg", 2),
    "list[png]": lambda: ImageList("list[png]", "png", 2),
    "ndarray": None,  # parameterised: see get_encoding
}


def get_encoding(text: str) -> Encoding:
    """Parse an encoding name as found in index.json (`ndarray:float32:3,4` included)."""
    name, _, rest = str(text).partition(":")
    if name == "ndarray":
        return _ndarray(rest.split(":") if rest else [])
    factory = ENCODINGS.get(name)
    if factory is None or rest:
        raise ValueError(f"unknown encoding {text!r}; allowed: {sorted(ENCODINGS)} "
                         "(ndarray also as ndarray:<dtype> or ndarray:<dtype>:<d0,d1,...>)")
    return factory()

