"""The encode stage: each frame's crop encoded, the views dropped, the samples table's types;
the caption's text columns: alignment scores equal to the cosines of the stored embeddings, text
states equal to the text encoder's own output."""

import numpy as np
import pyarrow as pa

from etl.config import load_config
from etl.stages.encode import EncodeStage
from etl.stages.rows import ERROR
from etl.transforms.frames import PIXEL_VIEW_TYPE
from schemas.tables import samples_schema


def _config(tiny, **more):
    return load_config("jobs/configs/local.yaml", {
        "input": "/in", "output": "/out", "frames.min_pixels": 32 * 32, "frames.max_pixels": 64 * 64,
        "frames.crop_size": 64, "models.embedder.model": str(tiny["clip"]), "models.vae.model": str(tiny["vae"]),
        "models.embedder.batch_size": 4, **more})


def _types(schema) -> dict:
    """What the encode stage adds, in the samples table's types."""
    names = ("embedding", "frame_embeddings", "latents", "caption_embedding", "clip_score_caption", "clip_score_text",
             "caption_text_states", "caption_text_mask")
    return {name: schema.field(name).type for name in names if name in schema.names}


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
    schema = samples_schema(16, (4, 8, 8), text_tower=False)
    out = EncodeStage(_config(tiny, **{"models.embedder.text_tower": False}), _types(schema))(batch.slice(1))
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
    with pytest.raises(ValueError, match=r"embedding of shape \[16\].*expects \[32\]"):
        EncodeStage(_config(tiny), _types(schema))
    states = samples_schema(16, (4, 8, 8), text_states=(77, 64))  # the tiny CLIP's text width is 32
    with pytest.raises(ValueError, match=r"caption_text_states of shape \[77, 32\].*expects \[77, 64\]"):
        EncodeStage(_config(tiny, **{"models.text_encoder.kind": "clip"}), _types(states))


def _captioned_batch(rng, texts):
    shapes = [[(64, 96)], [(64, 64), (96, 64)], [], [(64, 64)], [(64, 80)]]
    return pa.table({
        "sample_id": [f"0:{i}" for i in range(len(shapes))], ERROR: [None, None, "decode: bad", None, None],
        "caption_frames": pa.array([[_random_view(rng, h, w) for h, w in row] for row in shapes],
                                   pa.list_(PIXEL_VIEW_TYPE)),
        "crop_frames": pa.array([[None] * len(row) for row in shapes], pa.list_(PIXEL_VIEW_TYPE)),
        "caption": ["a red cat on a mat", "two dogs", "", "a bowl of soup, steaming", "sunset over the sea"],
        "_text": texts})


def _clip_text_embeddings(path, texts):
    """The checkpoint's text embeddings, computed here with transformers alone."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model, tokenizer = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        features = model.get_text_features(**tokens)
    features = getattr(features, "pooler_output", features)
    return (features / features.norm(dim=-1, keepdim=True)).numpy()


def test_alignment_scores_are_the_cosines_of_the_stored_embeddings(tiny):
    texts = ["a red cat", None, "sample text", "   ", "the sea at dusk"]
    schema = samples_schema(16, (4, 8, 8))
    out = EncodeStage(_config(tiny, **{"read.text_column": "text"}), _types(schema))(
        _captioned_batch(np.random.default_rng(1), texts))
    assert "_text" not in out.column_names
    embedding = out.column("embedding").combine_chunks().to_numpy_ndarray()
    captions = out.column("caption_embedding").combine_chunks().to_numpy_ndarray()
    scores = out.column("clip_score_caption").to_numpy(zero_copy_only=False)
    good = [0, 1, 3, 4]
    np.testing.assert_allclose(scores[good], np.sum(embedding[good] * captions[good], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(captions[good], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(captions[good], _clip_text_embeddings(
        str(tiny["clip"]), [out.column("caption")[i].as_py() for i in good]), rtol=1e-4, atol=1e-5)
    assert out.column("clip_score_caption").is_null().to_pylist() == [False, False, True, False, False]
    text_scores = out.column("clip_score_text").to_pylist()
    assert [s is None for s in text_scores] == [False, True, True, True, False]  # no text, failed row, blank text
    own = _clip_text_embeddings(str(tiny["clip"]), ["a red cat", "the sea at dusk"])
    np.testing.assert_allclose([text_scores[0], text_scores[4]], np.sum(own * embedding[[0, 4]], axis=1),
                               rtol=1e-4, atol=1e-5)


def test_caption_text_states_are_the_text_encoders_own_output(tiny):
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    schema = samples_schema(16, (4, 8, 8), text_tower=False, text_states=(24, 32))
    config = _config(tiny, **{"models.embedder.text_tower": False, "models.text_encoder.kind": "t5",
                              "models.text_encoder.model": str(tiny["t5"]), "models.text_encoder.max_length": 24})
    out = EncodeStage(config, _types(schema))(_captioned_batch(np.random.default_rng(2), [None] * 5))
    assert out.schema.field("caption_text_states").type == schema.field("caption_text_states").type
    states = out.column("caption_text_states").combine_chunks().to_numpy_ndarray()
    masks = out.column("caption_text_mask").combine_chunks().to_numpy_ndarray()
    assert states.shape == (5, 24, 32) and masks.dtype == np.int8
    good = [0, 1, 3, 4]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny["t5"]))
    tokens = tokenizer([out.column("caption")[i].as_py() for i in good], padding="max_length", max_length=24,
                       truncation=True, return_tensors="pt")
    with torch.inference_mode():
        expected = T5EncoderModel.from_pretrained(str(tiny["t5"])).eval()(**tokens).last_hidden_state.numpy()
    np.testing.assert_allclose(states[good], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(masks[good], tokens["attention_mask"].numpy())
    assert not states[2].any() and not masks[2].any()  # the failed row: zeros, and it goes to quarantine
