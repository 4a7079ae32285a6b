"""Per-frame hashes: pHash bit for bit equal to imagehash's (the common reference), on photos
from matplotlib's sample data and on generated frames; pixel hashes equal exactly for equal
pixels; through the CPU stage's decode, copies land near and unrelated images far."""

import io

import imagehash
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from etl.synthetic import jpeg_frames
from etl.transforms.frames import FrameSpec, decode_frame
from etl.transforms.hashes import hamming, perceptual_hash, pixel_hash

PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def _photo(name):
    return Image.open(cbook.get_sample_data(name, asfileobj=False))


def _reference(image) -> int:
    return int(np.uint64(int(str(imagehash.phash(image)), 16)).astype(np.int64))


def _encoded(image, fmt="JPEG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("name", PHOTOS)
def test_perceptual_hash_is_imagehashs_phash_on_photos(name):
    image = _photo(name)
    assert perceptual_hash(image, reducing_gap=None) == _reference(image)
    assert perceptual_hash(image.convert("RGB"), reducing_gap=None) == _reference(image.convert("RGB"))
    assert hamming(perceptual_hash(image), _reference(image)) <= 4  # the stage's faster thumbnail


def test_perceptual_hash_is_imagehashs_phash_on_many_sizes():
    rng = np.random.default_rng(0)
    distances = []
    for _ in range(60):
        height, width = (int(v) for v in rng.integers(9, 700, 2))
        coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        assert perceptual_hash(image, reducing_gap=None) == _reference(image), (width, height)
        distances.append(hamming(perceptual_hash(image), _reference(image)))
    assert np.median(distances) <= 2 and np.mean(distances) <= 1.5, distances  # a few flat images move more


def test_hamming_counts_differing_bits_of_signed_hashes():
    assert hamming(np.int64(-1), np.int64(0)) == 64
    assert hamming(np.int64(0b1011), np.int64(0b0001)) == 2
    np.testing.assert_array_equal(hamming(np.array([1, 2, -1]), np.int64(3)), [1, 1, 62])


def test_pixel_hash_tells_equal_pixels_only():
    photo = _photo("grace_hopper.jpg").convert("RGB")
    lossless = Image.open(io.BytesIO(_encoded(photo, "PNG"))).convert("RGB")
    assert pixel_hash(lossless) == pixel_hash(photo)
    changed = photo.copy()
    changed.putpixel((0, 0), tuple(255 - v for v in photo.getpixel((0, 0))))
    assert pixel_hash(changed) != pixel_hash(photo)
    assert pixel_hash(photo.crop((0, 0, 256, 300))) != pixel_hash(photo.crop((0, 0, 300, 256)))
    assert len(pixel_hash(photo)) == 32


def test_the_decoded_frame_carries_hashes_that_find_copies():
    spec = FrameSpec(min_pixels=32 * 32, max_pixels=224 * 224)
    photo = _photo("grace_hopper.jpg").convert("RGB")
    original = _encoded(photo, quality=90)
    frame = decode_frame(original, spec)
    again = decode_frame(original, spec)
    assert (again.pixel_hash, again.perceptual_hash) == (frame.pixel_hash, frame.perceptual_hash)
    reencoded = decode_frame(_encoded(photo, quality=40), spec)
    resized = decode_frame(_encoded(photo.resize((photo.width // 2, photo.height // 2)), quality=90), spec)
    assert reencoded.pixel_hash != frame.pixel_hash and resized.pixel_hash != frame.pixel_hash
    assert hamming(reencoded.perceptual_hash, frame.perceptual_hash) <= 4
    assert hamming(resized.perceptual_hash, frame.perceptual_hash) <= 4
    others = [decode_frame(data, spec) for data in jpeg_frames(6, 320, 240, seed=5)]
    assert min(hamming(o.perceptual_hash, frame.perceptual_hash) for o in others) >= 16
    assert decode_frame(original, FrameSpec(hashes=False)).pixel_hash is None
