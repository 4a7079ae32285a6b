import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from etl.mds.image_headers import image_limit_problems, image_sizes
from etl.synthetic import claim_jpeg_size


def _encode(size, fmt, **kwargs):
    out = io.BytesIO()
    Image.new("RGB", size).save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("fmt, kwargs", [("JPEG", {}), ("JPEG", {"progressive": True}),
                                         ("JPEG", {"exif": Image.Exif()}), ("PNG", {})])
def test_sizes_match_pillow_without_decoding(fmt, kwargs):
    images = [_encode(size, fmt, **kwargs) for size in [(1, 1), (17, 9), (1280, 720), (3, 4000)]]
    width, height, readable = image_sizes(pa.array(images, pa.large_binary()))
    assert readable.all()
    assert list(zip(width.tolist(), height.tolist())) == [Image.open(io.BytesIO(i)).size for i in images]


def test_garbage_and_truncated_headers_are_unreadable():
    jpeg = _encode((8, 8), "JPEG")
    _, _, readable = image_sizes(pa.array([b"", b"garbage", jpeg[:3], b"\x89PNG\r\n", jpeg], pa.large_binary()))
    assert readable.tolist() == [False, False, False, False, True]


def test_limit_problems_name_the_claim_and_map_list_elements_to_rows():
    small = _encode((10, 10), "JPEG")
    bomb = claim_jpeg_size(small, 60000, 60000)
    column = pa.array([[small, small], [small, bomb], [], [b"junk"]], pa.list_(pa.large_binary()))
    problems = image_limit_problems(column, max_pixels=10_000)
    assert [(mask.tolist(), why) for mask, why in problems] == [
        ([False, False, False, True], "no readable PNG or JPEG header"),
        ([False, True, False, False],
         "image claims 60000x60000 pixels, over max_image_pixels=10000 (decompression bomb?)"),
    ]
    assert np.array_equal(image_sizes(pa.array([bomb], pa.large_binary()))[0], [60000])
