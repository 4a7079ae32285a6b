import numpy as np
import pytest

from etl.models.encoders import ImageEmbedder, LatentEncoder, pool_per_sample
from etl.models.tiny import ensure_tiny_models


def _frames(count, size=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_tiny_checkpoints_use_the_production_classes_and_load_from_a_path(tiny):
    import json

    assert json.loads((tiny["clip"] / "config.json").read_text())["architectures"] == ["CLIPModel"]
    assert json.loads((tiny["vae"] / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    assert json.loads((tiny["qwen3_vl"] / "config.json").read_text())["architectures"] == [
        "Qwen3VLForConditionalGeneration"]
    assert json.loads((tiny["qwen3_vl"] / "processor_config.json").read_text())["processor_class"] == "Qwen3VLProcessor"
    built_at = {name: (path / "config.json").stat().st_mtime_ns for name, path in tiny.items()}
    again = ensure_tiny_models(tiny["clip"].parent)  # present: nothing rebuilt
    assert again == tiny
    assert {name: (path / "config.json").stat().st_mtime_ns for name, path in again.items()} == built_at


def test_image_embeddings_are_unit_vectors_and_repeatable(tiny):
    frames = _frames(5)
    first = ImageEmbedder(str(tiny["clip"]), batch_size=2)(frames)
    second = ImageEmbedder(str(tiny["clip"]))(frames)
    assert first.shape == (5, 16) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first[0], first[1])  # different frames, different embeddings


def test_crops_of_another_size_are_resized_on_the_device(tiny):
    embedder = ImageEmbedder(str(tiny["clip"]))
    assert embedder(_frames(2, size=160)).shape == (2, 16)
    with pytest.raises(ValueError, match=r"frames must be uint8 \(N, H, W, 3\)"):
        embedder(_frames(2).astype(np.float32))


def test_output_shapes_come_from_the_configs_alone(tiny):
    from etl.models.encoders import embedding_dim, latent_shape

    assert embedding_dim(str(tiny["clip"])) == ImageEmbedder(str(tiny["clip"])).dim == 16
    assert latent_shape(str(tiny["vae"]), 224, 160) == LatentEncoder(str(tiny["vae"])).latent_shape(224, 160) == (4, 28, 20)


def test_a_config_without_the_width_gets_the_model_class_default(tmp_path):
    from transformers import CLIPConfig, SiglipConfig

    from etl.models.encoders import embedding_dim

    (tmp_path / "config.json").write_text('{"model_type": "clip"}')  # written by hand, not save_pretrained
    assert embedding_dim(str(tmp_path)) == CLIPConfig().projection_dim
    (tmp_path / "config.json").write_text('{"model_type": "siglip"}')
    assert embedding_dim(str(tmp_path)) == SiglipConfig().vision_config.hidden_size


def test_latents_have_the_vae_shape_and_are_repeatable(tiny):
    encoder = LatentEncoder(str(tiny["vae"]), batch_size=3)
    frames = _frames(4)
    latents = encoder(frames)
    assert latents.shape == (4, *encoder.latent_shape(224, 224)) == (4, 4, 28, 28)
    np.testing.assert_allclose(latents, LatentEncoder(str(tiny["vae"]))(frames), rtol=1e-5, atol=1e-6)


def test_pooling_per_sample_follows_frame_counts():
    frames = np.eye(4, dtype=np.float32)[[0, 1, 1, 2, 3]]
    pooled = pool_per_sample(frames, np.array([2, 0, 3]))
    np.testing.assert_allclose(pooled[0], np.array([1, 1, 0, 0]) / np.sqrt(2), rtol=1e-6)
    assert not pooled[1].any()  # a sample with no frames has no embedding
    np.testing.assert_allclose(np.linalg.norm(pooled[2]), 1.0, rtol=1e-6)


def test_both_encoders_on_one_upload_match_each_alone(tiny):
    from etl.models.encoders import FrameEncoders, FrameUpload

    frames = _frames(5, size=64)
    together = FrameEncoders(str(tiny["clip"]), str(tiny["vae"]), embedder_batch_size=2, vae_batch_size=3)
    embeddings, latents = together(frames)
    np.testing.assert_allclose(embeddings, ImageEmbedder(str(tiny["clip"]))(frames), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(latents, LatentEncoder(str(tiny["vae"]))(frames), rtol=1e-5, atol=1e-6)
    assert embeddings.shape == (5, 16) and latents.shape == (5, 4, 8, 8)
    uploaded = FrameUpload("cpu")(frames)
    assert uploaded.shape == (5, 3, 64, 64) and uploaded.dtype.is_floating_point is False
    assert int(uploaded[1, 2, 3, 4]) == frames[1, 3, 4, 2]


def _photo(height, width, seed):
    """Smooth content (what a resize filter is for): a gradient with a few soft blobs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(x * rng.uniform(2, 9) + y * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return (np.stack(channels, axis=-1) * 120 + 128).astype(np.uint8)


def test_centre_crops_match_pillow_and_keep_the_frames_order():
    import torch
    from PIL import Image

    from etl.models.encoders import CROP_CHUNK_FRAMES, centre_crops

    # two shapes interleaved, one of them in more than one resize chunk, and one already the size
    shapes = [(96, 160), (160, 96)] * (CROP_CHUNK_FRAMES // 2 + 3) + [(32, 32)]
    frames = [_photo(h, w, i) for i, (h, w) in enumerate(shapes)]
    crops = centre_crops([torch.from_numpy(f) for f in frames], 32)
    assert crops.shape == (len(frames), 3, 32, 32) and crops.dtype == torch.uint8
    for got, frame in zip(crops.permute(0, 2, 3, 1).numpy(), frames):
        h, w, _ = frame.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        expected = np.asarray(Image.fromarray(frame).resize((32, 32), Image.BICUBIC,
                                                            box=(left, top, left + side, top + side)))
        assert np.abs(got.astype(int) - expected).mean() < 1.5
    assert np.array_equal(crops[-1].permute(1, 2, 0).numpy(), frames[-1])  # the right size: untouched
    with pytest.raises(ValueError, match=r"frame 0: need uint8 \(H, W, 3\)"):
        centre_crops([torch.zeros((4, 4), dtype=torch.uint8)], 4)


def test_views_of_any_size_encode_like_their_crops(tiny):
    import torch

    from etl.models.encoders import FrameEncoders, FrameUpload, centre_crops

    views = [_photo(h, w, i) for i, (h, w) in enumerate([(64, 96), (96, 64), (64, 64), (64, 96)])]
    for view in views:
        view.flags.writeable = False  # as Arrow hands them over
    encoders = FrameEncoders(str(tiny["clip"]), str(tiny["vae"]), embedder_batch_size=2, vae_batch_size=2)
    embeddings, latents = encoders.encode_views(views, 64)
    crops = centre_crops([torch.from_numpy(v.copy()) for v in views], 64).permute(0, 2, 3, 1).numpy()
    expected_embeddings, expected_latents = encoders(crops)
    np.testing.assert_allclose(embeddings, expected_embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(latents, expected_latents, rtol=1e-5, atol=1e-6)
    assert embeddings.shape == (4, 16) and latents.shape == (4, 4, 8, 8)
    uploaded = FrameUpload("cpu").views(views)
    assert [tuple(t.shape) for t in uploaded] == [v.shape for v in views]
    assert all(np.array_equal(t.numpy(), v) for t, v in zip(uploaded, views))
