import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from etl.mds.encodings import ENCODINGS, Segments, get_encoding

DOC = Path(__file__).resolve().parents[2] / "schemas" / "mds_arrow_types.md"


def _documented_types():
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", DOC.read_text(), flags=re.M)
    return {encoding: arrow for encoding, arrow in rows if encoding not in ("shard", "row", "mds_error")}


def test_schema_doc_lists_every_encoding_with_the_type_the_code_produces():
    documented = _documented_types()
    named = {name.split(":")[0] for name in documented}
    assert set(ENCODINGS) <= named
    for encoding, arrow in documented.items():
        assert str(get_encoding(encoding).arrow_type) == arrow, encoding


@pytest.mark.parametrize("text, message", [
    ("ndarray:complex64", "ndarray dtype 'complex64'"),
    ("ndarray:uint8:0,3", "has a dimension below 1"),
    ("str:utf8", "unknown encoding 'str:utf8'"),
])
def test_encoding_names_are_validated(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        get_encoding(text)


def test_pil_raw_sizes_agree_with_pillow_for_every_mode():
    from PIL import Image

    encoding = get_encoding("pil")
    modes = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA",
             "RGBX", "RGBa", "La", "I;16", "I;16B", "I;16L"]
    payloads = [encoding.encode_value(Image.new(mode, (13, 7))) for mode in modes]
    data = pa.py_buffer(b"".join(payloads))
    lengths = np.array([len(p) for p in payloads])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    array, problems = encoding.decode(Segments([data], starts, lengths))
    assert problems == []
    assert array.field("mode").to_pylist() == modes


def test_dynamic_ndarray_rejects_a_shape_that_does_not_match_its_bytes():
    encoding = get_encoding("ndarray:float32")
    good = encoding.encode_value(np.ones((2, 3), np.float32))
    bad = good[:-4]
    data = pa.py_buffer(good + bad)
    array, problems = encoding.decode(Segments([data], np.array([0, len(good)]), np.array([len(good), len(bad)])))
    assert array[0].as_py() == {"shape": [2, 3], "values": [1.0] * 6}
    assert [(mask.tolist(), why) for mask, why in problems] == [
        ([False, True], "ndarray shape [2, 3] x float32 does not match its 20 data bytes")]
