"""Encode: the actor owning the image embedder and the VAE. Each frame's centre crop is cut on
its device from the captioner view (or is the CPU stage's crop, where the view was too small);
adds the pooled `embedding` per sample and `frame_embeddings` and `latents` per frame as tensor
columns, in the samples table's types, and the caption's text columns (`etl.models.text_encoders`);
drops the pixel views and the sample's text."""

from typing import Optional

import numpy as np
import pyarrow as pa

from etl.config import JobConfig
from etl.cpu_cores import keep_off_engine_cores
from etl.stages import rows
from etl.stages.stage import Resources, RunContext, Step
from etl.transforms.frames import pixel_views


def tensor_array(values: np.ndarray, tensor: pa.FixedShapeTensorType) -> pa.ExtensionArray:
    """Rows of `values` (shape (n, *tensor.shape)) as a fixed-shape tensor column."""
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(np.prod(tensor.shape)))
    return pa.ExtensionArray.from_storage(tensor, storage)


def per_frame_tensors(values: np.ndarray, tensor: pa.FixedShapeTensorType, offsets: pa.Array) -> pa.ListArray:
    """One list of tensors per sample, `offsets` splitting the frames' rows of `values`."""
    return pa.ListArray.from_arrays(offsets, tensor_array(values, tensor))


def _texts(column: Optional[pa.ChunkedArray], count: int) -> list[Optional[str]]:
    """A text column's values as strings; None where it has none (null, empty or blank)."""
    values = column.to_pylist() if column is not None else [None] * count
    return [str(v) if v is not None and str(v).strip() else None for v in values]


class EncodeStage:
    """The encoders of one sample batch, on one device: the frames' embeddings and latents;
    with the embedder's text tower (models.embedder.text_tower), the caption's embedding and
    its and the sample's own text's cosine with the pooled image embedding; with a text encoder
    (models.text_encoder), the caption's hidden states. Rows without frames (failed earlier)
    get zeros and null scores: the write stage sends them to quarantine."""

    @classmethod
    def step(cls, run: RunContext) -> Step:
        plan, samples, config = run.plan, run.schemas["samples"], run.config
        names = [rows.EMBEDDING, rows.FRAME_EMBEDDINGS, rows.LATENTS]
        names += [n for n in (rows.CAPTION_EMBEDDING, rows.CLIP_SCORE_CAPTION, rows.CLIP_SCORE_TEXT,
                              rows.CAPTION_TEXT_STATES, rows.CAPTION_TEXT_MASK) if n in samples.names]
        adds = {name: samples.field(name).type for name in names}
        text = (rows.TEXT,) if config.read.text_column else ()
        captions = (rows.CAPTION,) if len(names) > 3 else ()
        return Step(cls, (config, adds), (rows.CAPTION_FRAMES, rows.CROP_FRAMES, *captions, *text),
                    {**adds, **rows.stamp_types("encode")},
                    Resources(cpus=plan.encoder_cpus, gpus=plan.encoder_gpus, memory=plan.encoder_memory,
                              actors=plan.encoders, batch_rows=config.models.embedder.batch_size,
                              placement="reserved"),
                    drops=(rows.CAPTION_FRAMES, rows.CROP_FRAMES, *text))

    def __init__(self, config: JobConfig, types: dict[str, pa.DataType]):
        from etl.models.encoders import FrameEncoders
        from etl.models.text_encoders import TextStates, TextTower

        models = config.models
        self.encoders = FrameEncoders(models.embedder.model, models.vae.model,
                                      embedder_batch_size=models.embedder.batch_size,
                                      vae_batch_size=models.vae.batch_size)
        self.crop_size, self.types = config.frames.crop_size, types
        device, embedder = self.encoders.device, self.encoders.embedder
        self.tower = (TextTower(embedder.model, models.embedder.model, device=device,
                                batch_size=models.embedder.batch_size) if rows.CAPTION_EMBEDDING in types else None)
        wanted = models.text_encoder
        shares = wanted.kind == "clip" and wanted.model is None
        self.states = (TextStates(wanted.kind, wanted.model or models.embedder.model, wanted.max_length,
                                  device=device, batch_size=wanted.batch_size,
                                  clip_model=embedder.model if shares else None)
                       if rows.CAPTION_TEXT_STATES in types else None)
        self._check_shapes()

    def _check_shapes(self) -> None:
        loaded = {rows.EMBEDDING: [self.encoders.embedder.dim],
                  rows.LATENTS: list(self.encoders.vae.latent_shape(self.crop_size, self.crop_size))}
        if self.states is not None:
            loaded[rows.CAPTION_TEXT_STATES] = [self.states.max_length, self.states.width]
        for name, shape in loaded.items():
            kind = self.types[name]
            expected = list((kind.value_type if pa.types.is_list(kind) else kind).shape)
            if shape != expected:
                raise ValueError(f"the loaded models give {name} of shape {shape}, the samples table expects "
                                 f"{expected}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        from etl.models.encoders import pool_per_sample

        keep_off_engine_cores()
        captions = batch.column(rows.CAPTION_FRAMES).combine_chunks()
        counts = np.diff(np.asarray(captions.offsets))
        crops = pixel_views(batch.column(rows.CROP_FRAMES).combine_chunks().flatten())
        frames = [view if crop is None else crop for crop, view in zip(crops, pixel_views(captions.flatten()))]
        embedding_type, latent_type = self.types[rows.EMBEDDING], self.types[rows.LATENTS].value_type
        if frames:
            embeddings, latents = self.encoders.encode_views(frames, self.crop_size)
        else:
            embeddings = np.zeros((0, *embedding_type.shape), np.float32)
            latents = np.zeros((0, *latent_type.shape), np.float32)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        pooled = pool_per_sample(embeddings, counts)
        columns = {rows.EMBEDDING: tensor_array(pooled, embedding_type),
                   rows.FRAME_EMBEDDINGS: per_frame_tensors(embeddings, embedding_type, offsets),
                   rows.LATENTS: per_frame_tensors(latents, latent_type, offsets),
                   **self._text_columns(batch, pooled, counts > 0)}
        batch = batch.drop_columns([c for c in (rows.CAPTION_FRAMES, rows.CROP_FRAMES, rows.TEXT)
                                    if c in batch.schema.names])
        for name in self.types:
            batch = batch.append_column(name, columns[name])
        return rows.stamped(batch, "encode")

    def _text_columns(self, batch: pa.Table, pooled: np.ndarray, has_frames: np.ndarray) -> dict[str, pa.Array]:
        """The caption's embedding and both scores (text tower), its hidden states (text encoder),
        for the rows with frames."""
        columns: dict[str, pa.Array] = {}
        count = batch.num_rows
        if self.tower is None and self.states is None:
            return columns
        captions = [c or "" for c in _texts(batch.column(rows.CAPTION), count)]
        todo = np.flatnonzero(has_frames)
        if self.tower is not None:
            caption_embeddings = np.zeros_like(pooled)
            caption_embeddings[todo] = self.tower([captions[i] for i in todo]) if len(todo) else 0
            own = _texts(batch.column(rows.TEXT) if rows.TEXT in batch.schema.names else None, count)
            with_text = [i for i in todo if own[i] is not None]
            text_scores = np.full(count, np.nan, np.float32)
            if with_text:
                text_scores[with_text] = np.sum(self.tower([own[i] for i in with_text]) * pooled[with_text], axis=1)
            caption_scores = np.where(has_frames, np.sum(caption_embeddings * pooled, axis=1), np.nan)
            columns[rows.CAPTION_EMBEDDING] = tensor_array(caption_embeddings, self.types[rows.CAPTION_EMBEDDING])
            for name, scores in ((rows.CLIP_SCORE_CAPTION, caption_scores), (rows.CLIP_SCORE_TEXT, text_scores)):
                columns[name] = pa.array(scores.astype(np.float32), rows.TYPES[name], mask=np.isnan(scores))
        if self.states is not None:
            states_type, mask_type = self.types[rows.CAPTION_TEXT_STATES], self.types[rows.CAPTION_TEXT_MASK]
            states = np.zeros((count, *states_type.shape), np.float32)
            masks = np.zeros((count, *mask_type.shape), np.int8)
            if len(todo):
                states[todo], masks[todo] = self.states([captions[i] for i in todo])
            columns[rows.CAPTION_TEXT_STATES] = tensor_array(states, states_type)
            columns[rows.CAPTION_TEXT_MASK] = tensor_array(masks, mask_type)
        return columns
