import numpy as np
import pyarrow.fs as pafs
import pytest

from etl import storage
from etl.models.checkpoints import CACHE_ENV, local_checkpoint


@pytest.fixture
def on_s3(bucket, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    uris = {}
    for name in ("clip", "vae"):
        fs, root = storage.resolve(f"{bucket}/models/{name}")
        pafs.copy_files(str(tiny[name]), root, destination_filesystem=fs)
        uris[name] = f"{bucket}/models/{name}"
    return uris


def test_s3_checkpoints_load_through_the_same_from_pretrained_code(on_s3, tiny):
    from etl.models.encoders import ImageEmbedder, LatentEncoder, embedding_dim, latent_shape

    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(ImageEmbedder(on_s3["clip"])(frames), ImageEmbedder(str(tiny["clip"]))(frames), rtol=1e-6)
    np.testing.assert_allclose(LatentEncoder(on_s3["vae"])(frames), LatentEncoder(str(tiny["vae"]))(frames), rtol=1e-6)
    assert embedding_dim(on_s3["clip"]) == 16 and latent_shape(on_s3["vae"], 64, 64) == (4, 8, 8)


def test_a_checkpoint_is_copied_once_and_an_unfinished_copy_is_redone(on_s3, tmp_path):
    first = local_checkpoint(on_s3["clip"])
    weights = tmp_path / "cache" / first.rsplit("/", 1)[1] / "model.safetensors"
    copied_at = weights.stat().st_mtime_ns
    assert local_checkpoint(on_s3["clip"]) == first and weights.stat().st_mtime_ns == copied_at
    (weights.parent / ".etl-complete").unlink()  # as if the copy had been killed before its marker
    assert local_checkpoint(on_s3["clip"]) == first and weights.stat().st_mtime_ns != copied_at
    assert local_checkpoint("/a/local/path") == "/a/local/path"
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        local_checkpoint(on_s3["clip"] + "-missing")
