"""The encode stage: each frame's crop encoded, the views dropped, the samples table's types."""

import numpy as np
import pyarrow as pa

from etl.config import load_config
from etl.stages.encode import EncodeStage
from etl.stages.rows import ERROR
from etl.transforms.frames import PIXEL_VIEW_TYPE
from schemas.tables import samples_schema


def _config(tiny):
    return load_config("jobs/configs/local.yaml", {
        "input": "/in", "output": "/out", "frames.min_pixels": 32 * 32, "frames.max_pixels": 64 * 64,
        "frames.crop_size": 64, "models.embedder.model": str(tiny["clip"]), "models.vae.model": str(tiny["vae"]),
        "models.embedder.batch_size": 4})


def _random_view(rng, height, width):
    return {"height": height, "width": width, "pixels": rng.integers(0, 256, height * width * 3, dtype=np.uint8).tobytes()}


def test_the_encode_stage_encodes_each_frames_crop_and_drops_the_views(tiny):
    import torch

    from etl.models.encoders import FrameEncoders, centre_crops

    rng = np.random.default_rng(0)
    shapes = [[(64, 96), (64, 96)], [], [(96, 64)], [(64, 64), (32, 96), (96, 64)]]
    views = [[_random_view(rng, h, w) for h, w in row] for row in shapes]
    crops = [[None] * len(row) for row in shapes]
    crops[3][1] = _random_view(rng, 64, 64)  # a view too small for the crop: the CPU stage sent the crop itself
    batch = pa.table({"sample_id": [f"0:{i}" for i in range(4)], ERROR: [None, "decode: bad", None, None],
                      "caption_frames": pa.array(views, pa.list_(PIXEL_VIEW_TYPE)),
                      "crop_frames": pa.array(crops, pa.list_(PIXEL_VIEW_TYPE))})
    schema = samples_schema(16, (4, 8, 8))
    out = EncodeStage(_config(tiny), schema.field("embedding").type, schema.field("latents").type.value_type)(
        batch.slice(1))
    assert out.schema.field("embedding").type == schema.field("embedding").type
    assert out.schema.field("latents").type == schema.field("latents").type
    assert "caption_frames" not in out.column_names and "crop_frames" not in out.column_names
    sent = [crop or view for view_row, crop_row in zip(views[1:], crops[1:]) for view, crop in zip(view_row, crop_row)]
    frames = [torch.from_numpy(np.frombuffer(c["pixels"], np.uint8).reshape(c["height"], c["width"], 3).copy())
              for c in sent]
    expected = FrameEncoders(str(tiny["clip"]), str(tiny["vae"]))(centre_crops(frames, 64).permute(0, 2, 3, 1).numpy())
    got = out.column("frame_embeddings").combine_chunks()
    assert got.value_lengths().to_pylist() == [0, 1, 3]
    np.testing.assert_allclose(got.flatten().to_numpy_ndarray(), expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.column("latents").combine_chunks().flatten().to_numpy_ndarray(), expected[1],
                               rtol=1e-4, atol=1e-5)


def test_encoders_that_do_not_match_the_samples_table_are_refused_at_setup(tiny):
    import pytest

    schema = samples_schema(32, (4, 8, 8))  # the tiny CLIP embeds to 16
    with pytest.raises(ValueError, match=r"embeddings \[16\].*expects \[32\]"):
        EncodeStage(_config(tiny), schema.field("embedding").type, schema.field("latents").type.value_type)
