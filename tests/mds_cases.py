"""Samples covering every MDS encoding, written and read by the reference library, and
normalisers that bring reference values and ours to one comparable form."""

import io
import json
import math
import pickle
import uuid
from decimal import Decimal

import numpy as np
from PIL import Image

# Every encoding the reference registry knows, one column each (pkl kept apart: it needs opt-in).
SAFE_COLUMNS = {
    "c_bytes": "bytes", "c_str": "str", "c_int": "int",
    "c_u8": "uint8", "c_u16": "uint16", "c_u32": "uint32", "c_u64": "uint64",
    "c_i8": "int8", "c_i16": "int16", "c_i32": "int32", "c_i64": "int64",
    "c_f16": "float16", "c_f32": "float32", "c_f64": "float64",
    "c_str_int": "str_int", "c_str_float": "str_float", "c_str_decimal": "str_decimal",
    "c_json": "json", "c_jpeg": "jpeg", "c_png": "png", "c_pil": "pil",
    "c_jpeg_array": "jpeg_array", "c_jpegarray": "jpegarray",
    "c_list_pil": "list[pil]", "c_list_jpeg": "list[jpeg]", "c_list_png": "list[png]",
    "c_nd": "ndarray", "c_nd_dtype": "ndarray:float32", "c_nd_fixed": "ndarray:int16:2,3",
}
ALL_COLUMNS = {**SAFE_COLUMNS, "c_pkl": "pkl"}


def _image(rng, mode="RGB", size=(12, 8)):
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def jpeg_bytes(rng, size=(16, 12)):
    out = io.BytesIO()
    _image(rng, size=size).save(out, format="JPEG")
    return out.getvalue()


def make_samples(count, seed=0, big_first=False):
    """`count` samples of ALL_COLUMNS. Multi-frame columns hold 5-10 frames. `big_first` makes
    sample 0 larger than small size limits, so the reference writer emits an empty shard 0."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(count):
        frames = int(rng.integers(5, 11))
        modes = ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "1", "F"]
        sample = {
            "c_bytes": rng.bytes(int(rng.integers(0, 40))) + (rng.bytes(20000) if big_first and k == 0 else b""),
            "c_str": "".join(rng.choice(list("abcé漢字 \n"), int(rng.integers(0, 30)))),
            "c_int": int(rng.integers(-2**62, 2**62)),
            "c_u8": int(rng.integers(0, 2**8)), "c_u16": int(rng.integers(0, 2**16)),
            "c_u32": int(rng.integers(0, 2**32)), "c_u64": int(rng.integers(0, 2**63)) * 2 + 1,
            "c_i8": int(rng.integers(-2**7, 2**7)), "c_i16": int(rng.integers(-2**15, 2**15)),
            "c_i32": int(rng.integers(-2**31, 2**31)), "c_i64": int(rng.integers(-2**63, 2**63)),
            "c_f16": float(np.float16(rng.normal())), "c_f32": float(np.float32(rng.normal())),
            "c_f64": float(rng.normal()) if k % 5 else math.inf,
            "c_str_int": int(rng.integers(-10**15, 10**15)), "c_str_float": float(rng.normal() * 1e10),
            "c_str_decimal": Decimal(int(rng.integers(-10**6, 10**6))) / 1000,
            "c_json": {"k": k, "tags": ["a", "b"][: k % 3], "score": round(float(rng.random()), 3)},
            "c_jpeg": _image(rng), "c_png": _image(rng, "RGBA"),
            "c_pil": _image(rng, modes[k % len(modes)], (int(rng.integers(1, 9)), int(rng.integers(1, 9)))),
            "c_jpeg_array": [jpeg_bytes(rng) for _ in range(frames)],
            "c_jpegarray": [jpeg_bytes(rng) for _ in range(2)],
            "c_list_pil": [_image(rng, "L", (3, 2)), _image(rng, "RGB", (2, 3))],
            "c_list_jpeg": [_image(rng) for _ in range(frames)],
            "c_list_png": [_image(rng, "L") for _ in range(k % 3)],
            "c_nd": rng.normal(size=tuple(int(d) for d in rng.integers(1, 4, size=int(rng.integers(1, 4))))),
            "c_nd_dtype": rng.normal(size=(int(rng.integers(1, 5)), 2)).astype(np.float32),
            "c_nd_fixed": rng.integers(-1000, 1000, size=(2, 3)).astype(np.int16),
            "c_pkl": {"k": k, "set": {1, 2}, "tuple": (k, "x")},
        }
        samples.append(sample)
    return samples


def write_reference(path, samples, columns=ALL_COLUMNS, **kwargs):
    from streaming import MDSWriter

    with MDSWriter(out=str(path), columns=columns, **kwargs) as writer:
        for sample in samples:
            writer.write({name: sample[name] for name in columns})


def read_reference(path):
    """Every sample as the reference `StreamingDataset` returns it, in index order."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    dataset = StreamingDataset(local=str(path), shuffle=False, batch_size=1, allow_unsafe_types=True)
    try:
        return [dataset[i] for i in range(len(dataset))]
    finally:
        del dataset


def _pixels(image):
    return (image.mode, image.size, image.tobytes())


def _pil_struct(value):
    return (value["mode"], (value["width"], value["height"]), value["data"])


def _decoded(data):
    return _pixels(Image.open(io.BytesIO(data)))


def _number(x):
    x = float(x)
    return "nan" if math.isnan(x) else x


def normalize_reference(encoding, value):
    if encoding in ("jpeg", "png"):
        return _pixels(value)
    if encoding == "pil":
        return _pixels(value)
    if encoding in ("jpeg_array", "jpegarray", "list[jpeg]", "list[png]", "list[pil]"):
        return [_pixels(v) for v in value]
    if encoding.startswith("ndarray"):
        return (np.asarray(value).dtype.name, list(np.shape(value)), np.asarray(value).tobytes())
    if encoding in ("float16", "float32", "float64", "str_float"):
        return _number(value)
    if encoding in ("str_decimal",):
        return Decimal(value)
    if encoding.startswith(("uint", "int")):
        return int(value)
    return value


def normalize_ours(encoding, value):
    if encoding in ("jpeg", "png"):
        return _decoded(value)
    if encoding == "pil":
        return _pil_struct(value)
    if encoding == "list[pil]":
        return [_pil_struct(v) for v in value]
    if encoding in ("jpeg_array", "jpegarray", "list[jpeg]", "list[png]"):
        return [_decoded(v) for v in value]
    if encoding == "ndarray":
        return (value["dtype"], value["shape"], value["data"])
    if encoding.startswith("ndarray:"):
        _, dtype, *shape = encoding.split(":")
        if shape:
            array = np.asarray(value, dtype=dtype).reshape([int(d) for d in shape[0].split(",")])
        else:
            array = np.asarray(value["values"], dtype=dtype).reshape(value["shape"])
        return (array.dtype.name, list(array.shape), array.tobytes())
    if encoding in ("float16", "float32", "float64", "str_float"):
        return _number(value)
    if encoding == "str_decimal":
        return Decimal(value)
    if encoding == "json":
        return json.loads(value)
    if encoding == "pkl":
        return pickle.loads(value)
    return value


def assert_rows_match(ours, reference, columns=ALL_COLUMNS):
    assert len(ours) == len(reference)
    for i, (mine, theirs) in enumerate(zip(ours, reference)):
        for name, encoding in columns.items():
            got, want = normalize_ours(encoding, mine[name]), normalize_reference(encoding, theirs[name])
            assert got == want, f"row {i} column {name} ({encoding}): {got!r:.200} != {want!r:.200}"


def unique_name():
    return uuid.uuid4().hex[:8]
