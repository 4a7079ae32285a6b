import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from etl.synthetic import jpeg_frames
from etl.transforms.frames import FrameError, FrameSpec, decode_frame, decode_sample

SPEC = FrameSpec(max_pixels=224 * 224, min_pixels=32 * 32, crop_size=64)


def _encode(image, fmt="PNG", **kwargs):
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _quadrants(width=96, height=64):
    """Red top-left quadrant on blue: shows where the top-left corner ended up."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[...] = (0, 0, 255)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    return Image.fromarray(pixels)


def test_views_have_qwen_sizes_and_the_crop_size():
    frame = decode_frame(jpeg_frames(1, 1280, 720)[0], FrameSpec(crop_size=384))
    h, w, _ = frame.caption_view.shape
    assert h % 32 == 0 and w % 32 == 0 and 65536 <= h * w <= 448 * 448
    assert abs(w / h - 1280 / 720) < 0.1
    assert min(h, w) < 384  # too small to cut a 384 px crop from without upscaling: cut here
    assert frame.crop.shape == (384, 384, 3) and frame.crop.dtype == np.uint8
    assert frame.source_size == (1280, 720)


def test_the_crop_is_left_to_the_encoders_where_the_view_is_large_enough():
    data = jpeg_frames(1, 1280, 720)[0]
    frame = decode_frame(data, FrameSpec(crop_size=224))
    assert frame.crop is None and min(frame.caption_view.shape[:2]) >= 224
    assert decode_frame(data, FrameSpec(crop_size=224, crops_on_cpu=True)).crop.shape == (224, 224, 3)
    # the same view either way: the crop's size no longer decides the decode scale
    np.testing.assert_array_equal(frame.caption_view, decode_frame(data, FrameSpec(crop_size=16)).caption_view)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(_quadrants(), "JPEG", exif=exif, quality=95)
    frame = decode_frame(data, SPEC)
    h, w, _ = frame.caption_view.shape
    assert h > w  # landscape source displays as portrait
    top_right = frame.caption_view[: h // 4, -w // 4:].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[2] < 60  # red moved from top-left to top-right


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I;16", "I", "F", "YCbCr", "PA"])
def test_every_mode_becomes_rgb(mode):
    source = _quadrants()
    image = source.convert(mode) if mode not in ("I;16", "I", "F", "PA") else None
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(source.convert("L"), np.float64)
        scale = {"I;16": 257, "I": 257, "F": 1}[mode]
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        image = Image.fromarray((grey * scale).astype(dtype))
        image = image if image.mode == mode else image.convert(mode)
    if mode == "PA":
        image = source.convert("P").convert("PA")
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else "TIFF" if mode in ("I", "F", "PA") else "PNG"
    frame = decode_frame(_encode(image, fmt), SPEC)
    assert frame.caption_view.dtype == np.uint8 and frame.caption_view.shape[2] == 3
    expected = np.asarray(source.convert("L").resize(frame.caption_view.shape[1::-1]), np.float64)
    got = np.asarray(Image.fromarray(frame.caption_view).convert("L"), np.float64)
    if mode != "1":  # bilevel keeps only the shape
        assert np.abs(got - expected).mean() < 25, mode  # 16-bit range mapped, not clipped


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    frame = decode_frame(_encode(clear), SPEC)
    assert frame.caption_view.min() == 255


def test_draft_decode_is_close_to_full_decode():
    data = jpeg_frames(1, 1280, 720)[0]
    drafted = decode_frame(data, FrameSpec()).caption_view.astype(np.float64)
    full = decode_frame(data, FrameSpec(use_draft=False)).caption_view.astype(np.float64)
    psnr = 10 * np.log10(255 ** 2 / np.mean((drafted - full) ** 2))
    assert psnr > 35, psnr


@pytest.mark.parametrize("data, reason", [
    (b"", "not a decodable image"),
    (b"garbage bytes", "not a decodable image"),
])
def test_undecodable_frames_raise_frame_error_with_a_reason(data, reason):
    with pytest.raises(FrameError, match=reason):
        decode_frame(data, SPEC)


def test_truncated_jpeg_and_bomb_and_empty_sample():
    good = jpeg_frames(1, 320, 180)[0]
    with pytest.raises(FrameError, match=r"frame 1: cannot decode \(OSError"):
        decode_sample([good, good[: len(good) // 3]], SPEC)
    from etl.synthetic import claim_jpeg_size

    with pytest.raises(FrameError, match=r"frame 0: image claims 10000x6000 pixels, over max_image_pixels=50000000"):
        decode_sample([claim_jpeg_size(good, 10000, 6000)], SPEC)
    with pytest.raises(FrameError, match=r"frame 0: decompression bomb: Image size \(3600000000 pixels\)"):
        decode_sample([claim_jpeg_size(good, 60000, 60000)], SPEC)  # Pillow's own, larger limit
    with pytest.raises(FrameError, match="sample has no frames"):
        decode_sample([], SPEC)
    # more frames than the engine takes per request (and the planner counted tokens for)
    with pytest.raises(FrameError, match=r"^3 frames, more than frames.max_frames \(2\)$"):
        decode_sample([good] * 3, FrameSpec(max_pixels=224 * 224, min_pixels=32 * 32, crop_size=64, max_frames=2))


def test_spec_is_validated():
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        FrameSpec(min_pixels=10, max_pixels=5)


def test_pil_cells_from_read_mds_decode_like_files():
    image = _quadrants().convert("RGBA")
    cell = {"width": image.width, "height": image.height, "mode": image.mode, "data": image.tobytes()}
    from_cell = decode_frame(cell, SPEC)
    from_file = decode_frame(_encode(image), SPEC)
    np.testing.assert_array_equal(from_cell.caption_view, from_file.caption_view)
    with pytest.raises(FrameError, match="not a decodable image"):
        decode_frame(dict(cell, data=cell["data"][:10]), SPEC)


def test_smart_resize_equals_transformers_qwen2_vl_rule():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    from etl.transforms.frames import smart_resize

    rng = np.random.default_rng(0)
    sides = list(rng.integers(1, 5000, 300)) + [1, 31, 32, 33, 447, 448, 449, 720, 1280, 1920, 4096]
    for height, width in zip(sides, reversed(sides)):
        if max(height, width) / min(height, width) > 200:
            continue
        for factor, low, high in ((32, 4096, 50176), (28, 56 * 56, 14 * 14 * 4 * 1280), (32, 32 * 32, 448 * 448)):
            assert smart_resize(int(height), int(width), factor, low, high) == \
                reference(int(height), int(width), factor=factor, min_pixels=low, max_pixels=high), (height, width)


def test_extreme_aspect_ratio_is_a_frame_error():
    from etl.transforms.frames import FrameError, smart_resize

    with pytest.raises(FrameError, match="aspect ratio must be smaller than 200"):
        smart_resize(10, 2010, 32, 4096, 50176)


def test_pixel_views_read_each_cell_in_place_and_keep_nulls():
    from etl.transforms.frames import PIXEL_VIEW_TYPE, pixel_views

    cells = [{"height": 1, "width": 2, "pixels": bytes(range(6))}, None,
             {"height": 2, "width": 1, "pixels": bytes(range(6, 12))}, {"height": 1, "width": 1, "pixels": b"xyz"}]
    views = pa.array(cells, PIXEL_VIEW_TYPE)
    got = pixel_views(views.slice(1, 3))  # a slice: its buffers start before its first cell
    assert got[0] is None
    assert got[1].shape == (2, 1, 3) and got[1].reshape(-1).tolist() == list(range(6, 12))
    assert got[2].tobytes() == b"xyz"
    assert pixel_views(views)[0].shape == (1, 2, 3) and pixel_views(views.slice(0, 0)) == []


def test_view_lists_build_what_arrow_builds_from_cells_and_read_back_in_place():
    from etl.transforms.frames import PIXEL_VIEW_TYPE, pixel_views, view_lists

    rng = np.random.default_rng(0)
    frame = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rows = [[frame(2, 3), None], [], [frame(4, 1)], [None]]
    built = view_lists(rows)
    cells = [[None if f is None else {"height": f.shape[0], "width": f.shape[1], "pixels": f.tobytes()} for f in row]
             for row in rows]
    assert built.type == pa.list_(PIXEL_VIEW_TYPE)
    assert built.to_pylist() == pa.array(cells, pa.list_(PIXEL_VIEW_TYPE)).to_pylist()
    read = pixel_views(built.flatten())
    assert [None if v is None else v.shape for v in read] == [(2, 3, 3), None, (4, 1, 3), None]
    assert np.array_equal(read[0], rows[0][0]) and np.array_equal(read[2], rows[2][0])
    assert view_lists([]).to_pylist() == [] and view_lists([[None]]).to_pylist() == [[None]]
