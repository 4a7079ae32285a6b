"""Model footprints come from the checkpoints' files and configs, local or on S3."""

import os

import pytest

from etl import planner
from etl.planner import ModelFootprint, PlanError
from tests.large_checkpoints import qwen3_vl_8b_like


def test_footprints_come_from_the_checkpoint_files_and_config(tmp_path, tiny):
    checkpoint = qwen3_vl_8b_like(tiny["qwen3_vl"], tmp_path / "qwen8b")
    footprint = planner.captioner_footprint(str(checkpoint))
    assert footprint == ModelFootprint(17_500_000_000, 2 * 36 * 8 * 128 * 2, 32, 2)
    with pytest.raises(PlanError, match="no checkpoint at"):
        planner.captioner_footprint(str(tmp_path / "missing"))


def test_footprints_read_from_s3(bucket, tiny):
    import pyarrow.fs as pafs

    from etl import storage

    for name in ("clip", "vae"):
        fs, root = storage.resolve(f"{bucket}/models/{name}")
        pafs.copy_files(str(tiny[name]), root, destination_filesystem=fs)
    local = planner.encoders_footprint(str(tiny["clip"]), str(tiny["vae"]))
    assert planner.encoders_footprint(f"{bucket}/models/clip", f"{bucket}/models/vae") == local
    assert local.weights_bytes == sum(os.path.getsize(tiny[name] / "diffusion_pytorch_model.safetensors" if name == "vae"
                                                      else tiny[name] / "model.safetensors") for name in ("clip", "vae"))


def test_the_encoders_footprint_agrees_with_what_the_loaded_encoders_produce(tiny):
    """The planner sizes rows and activations from the configs alone; the encoders it sizes give
    exactly those embeddings and latents once loaded."""
    from etl.models.encoders import FrameEncoders

    footprint = planner.encoders_footprint(str(tiny["clip"]), str(tiny["vae"]))
    encoders = FrameEncoders(str(tiny["clip"]), str(tiny["vae"]))
    side = 64 // footprint.latent_downscale
    assert footprint.embedding_dim == encoders.embedder.dim
    assert (footprint.latent_channels, side, side) == tuple(encoders.vae.latent_shape(64, 64))
    assert footprint.embedder_pixels == encoders.embedder.size[0] * encoders.embedder.size[1]
    assert footprint.vae_channels == encoders.vae.vae.config.block_out_channels[0]
