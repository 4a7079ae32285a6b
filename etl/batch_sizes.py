"""Rows per batch of the stages whose batches the config does not give directly, derived once:
the stages run with these and the planner sizes their memory from the same numbers."""

from etl.transforms.frames import pixel_bytes_per_frame

CAPTION_CALLS_PER_BATCH = 4  # captioner calls per caption-stage batch
DECODE_BUDGET_BYTES = 64 << 20  # decoded pixels per decode batch


def caption_batch_rows(config) -> int:
    return config.models.captioner.batch_size * CAPTION_CALLS_PER_BATCH


def decoded_bytes_per_frame(config) -> int:
    return pixel_bytes_per_frame(config.frames.max_pixels, config.frames.crop_size)


def decode_batch_rows(config) -> int:
    """Samples per decode batch: at most DECODE_BUDGET_BYTES of decoded pixels, and no more than
    one caption-stage batch. Ray Data never splits a block and an actor task emits its output
    only once it fills a block (128 MiB) or ends: one decode batch of a whole small-frame shard
    became one caption task whose captions all reached the encoders at once, after the last."""
    per_sample = config.frames.max_frames * decoded_bytes_per_frame(config)
    return max(1, min(DECODE_BUDGET_BYTES // per_sample, caption_batch_rows(config)))


def decode_batch_bytes(config) -> int:
    """The most decoded pixels one decode batch holds: the decode stage's pixel budget."""
    return decode_batch_rows(config) * config.frames.max_frames * decoded_bytes_per_frame(config)
