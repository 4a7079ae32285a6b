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

    fs, root = storage.resolve(f"{bucket}/models/clip")
    pafs.copy_files(str(tiny["clip"]), root, destination_filesystem=fs)
    local = planner.encoders_footprint(str(tiny["clip"]))
    assert planner.encoders_footprint(f"{bucket}/models/clip") == local
    assert local.weights_bytes == os.path.getsize(tiny["clip"] / "model.safetensors")
