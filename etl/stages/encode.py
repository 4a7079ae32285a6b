"""Encode: the actor owning the image embedder and the VAE. Each frame's centre crop is cut on
its device from the captioner view (or is the CPU stage's crop, where the view was too small);
adds the pooled `embedding` per sample and `frame_embeddings` and `latents` per frame as tensor
columns, in the samples table's types, and drops the pixel views."""

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


class EncodeStage:
    @classmethod
    def step(cls, run: RunContext) -> Step:
        plan, samples = run.plan, run.schemas["samples"]
        adds = {name: samples.field(name).type for name in (rows.EMBEDDING, rows.FRAME_EMBEDDINGS, rows.LATENTS)}
        return Step(cls, (run.config, adds[rows.EMBEDDING], samples.field(rows.LATENTS).type.value_type),
                    (rows.CAPTION_FRAMES, rows.CROP_FRAMES), {**adds, **rows.stamp_types("encode")},
                    Resources(cpus=plan.encoder_cpus, gpus=plan.encoder_gpus, memory=plan.encoder_memory,
                              actors=plan.encoders, batch_rows=run.config.models.embedder.batch_size,
                              placement="reserved"),
                    drops=(rows.CAPTION_FRAMES, rows.CROP_FRAMES))

    def __init__(self, config: JobConfig, embedding_type: pa.FixedShapeTensorType,
                 latent_type: pa.FixedShapeTensorType):
        from etl.models.encoders import FrameEncoders

        models = config.models
        self.encoders = FrameEncoders(models.embedder.model, models.vae.model,
                                      embedder_batch_size=models.embedder.batch_size,
                                      vae_batch_size=models.vae.batch_size)
        self.crop_size = config.frames.crop_size
        self.embedding_type, self.latent_type = embedding_type, latent_type
        loaded = ([self.encoders.embedder.dim], list(self.encoders.vae.latent_shape(self.crop_size, self.crop_size)))
        if loaded != (embedding_type.shape, latent_type.shape):
            raise ValueError(f"the loaded encoders give embeddings {loaded[0]} and latents {loaded[1]}, the samples "
                             f"table expects {embedding_type.shape} and {latent_type.shape}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        from etl.models.encoders import pool_per_sample

        keep_off_engine_cores()
        captions = batch.column(rows.CAPTION_FRAMES).combine_chunks()
        counts = np.diff(np.asarray(captions.offsets))
        crops = pixel_views(batch.column(rows.CROP_FRAMES).combine_chunks().flatten())
        frames = [view if crop is None else crop for crop, view in zip(crops, pixel_views(captions.flatten()))]
        if frames:
            embeddings, latents = self.encoders.encode_views(frames, self.crop_size)
        else:
            embeddings = np.zeros((0, *self.embedding_type.shape), np.float32)
            latents = np.zeros((0, *self.latent_type.shape), np.float32)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        return rows.stamped(batch.drop_columns([rows.CAPTION_FRAMES, rows.CROP_FRAMES])
                            .append_column(rows.EMBEDDING,
                                           tensor_array(pool_per_sample(embeddings, counts), self.embedding_type))
                            .append_column(rows.FRAME_EMBEDDINGS,
                                           per_frame_tensors(embeddings, self.embedding_type, offsets))
                            .append_column(rows.LATENTS, per_frame_tensors(latents, self.latent_type, offsets)),
                            "encode")
