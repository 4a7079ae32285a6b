"""Batch sizes derived once from the config: the stages run with them and the planner sizes
memory by them, so both must follow the config the same way."""

import pytest

from etl.batch_sizes import (
    DECODE_BUDGET_BYTES, caption_batch_rows, decode_batch_bytes, decode_batch_rows, decoded_bytes_per_frame,
)
from etl.config import load_config


def config(**overrides):
    return load_config(None, {"input": "in", "output": "out", **overrides})


@pytest.mark.parametrize("max_pixels, max_frames", [(64 * 64, 1), (224 * 224, 10), (448 * 448, 10), (1280 * 720, 32)])
def test_a_decode_batch_stays_inside_the_pixel_budget_and_one_caption_batch(max_pixels, max_frames):
    settings = config(**{"frames.max_pixels": max_pixels, "frames.min_pixels": 32 * 32, "frames.max_frames": max_frames})
    rows = decode_batch_rows(settings)
    per_sample = max_frames * decoded_bytes_per_frame(settings)
    assert 1 <= rows <= caption_batch_rows(settings)
    # as many samples as fit the budget (one at least, even when one sample alone exceeds it)
    assert rows == 1 or rows * per_sample <= DECODE_BUDGET_BYTES
    assert rows == caption_batch_rows(settings) or (rows + 1) * per_sample > DECODE_BUDGET_BYTES
    assert decode_batch_bytes(settings) == rows * per_sample


def test_small_frames_are_bounded_by_the_caption_batch_not_the_budget():
    settings = config(**{"frames.max_pixels": 32 * 32, "frames.min_pixels": 32 * 32, "frames.crop_size": 32,
                         "frames.max_frames": 1, "models.captioner.batch_size": 8})
    assert decode_batch_rows(settings) == caption_batch_rows(settings) == 8 * 4
