"""Decode: the CPU stage. Each sample's encoded frames become pixel views (`etl.transforms.frames`
does the per-frame work): the captioner's view of every frame and, where the encoders cannot
cut it on their device, their centre crop. A sample that cannot be decoded gets its reason in
`error`; each frame's pixel and perceptual hashes go on, for `jobs.dedup`; a few chosen rows get
a small JPEG for the report's contact sheet."""

from typing import Optional

import pyarrow as pa

from etl.batch_sizes import decode_batch_rows
from etl.config import JobConfig
from etl.cpu_cores import keep_off_engine_cores
from etl.stages import rows
from etl.stages.previews import PreviewRows, preview_column
from etl.stages.stage import Resources, RunContext, Step
from etl.transforms.frames import Frame, FrameError, FrameSpec, decode_sample, view_lists


def frame_spec(config: JobConfig, encoders_on_gpu: bool = True) -> FrameSpec:
    frames = config.frames
    return FrameSpec(min_pixels=frames.min_pixels, max_pixels=frames.max_pixels, crop_size=frames.crop_size,
                     max_image_pixels=frames.max_image_pixels, use_draft=frames.use_draft,
                     max_frames=frames.max_frames, crops_on_cpu=not encoders_on_gpu)


class DecodeStage:
    """Replaces the frames column with CAPTION_FRAMES, CROP_FRAMES, FRAME_COUNT, FRAME_SIZES and
    the frames' hashes.
    Rows that arrive with an error pass through untouched."""

    @classmethod
    def step(cls, run: RunContext) -> Step:
        plan = run.plan
        spec = frame_spec(run.config, encoders_on_gpu=plan.encoder_gpus > 0)
        adds = {name: rows.TYPES[name] for name in
                (rows.CAPTION_FRAMES, rows.CROP_FRAMES, rows.FRAME_COUNT, rows.FRAME_SIZES,
                  rows.FRAME_PIXEL_HASHES, rows.FRAME_PERCEPTUAL_HASHES, rows.PREVIEW)}
        return Step(cls, (spec, run.previews), (rows.FRAMES, rows.ERROR, rows.SHARD, rows.ROW),
                    {**adds, **rows.stamp_types("decode")},
                    Resources(cpus=plan.decode_cpus, memory=plan.decode_memory, actors=plan.decode_actors,
                              batch_rows=decode_batch_rows(run.config)), drops=(rows.FRAMES,))

    def __init__(self, spec: FrameSpec, previews: PreviewRows, image_column: str = rows.FRAMES,
                 error_column: str = rows.ERROR):
        self.spec, self.previews = spec, previews
        self.image_column, self.error_column = image_column, error_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep_off_engine_cores()
        column = batch.column(self.image_column).combine_chunks()
        errors = batch.column(self.error_column).to_pylist()
        is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        decoded = [self._sample(value if is_list else [value], i, errors) for i, value in enumerate(column.to_pylist())]
        batch = batch.set_column(batch.schema.get_field_index(self.error_column), self.error_column,
                                 pa.array(errors, pa.string()))
        batch = (batch.drop_columns([self.image_column])  # consumed: the encoded bytes go no further
                 .append_column(rows.CAPTION_FRAMES, view_lists([[f.caption_view for f in s] for s in decoded]))
                 .append_column(rows.CROP_FRAMES, view_lists([[f.crop for f in s] for s in decoded]))
                 .append_column(rows.FRAME_COUNT, pa.array([len(s) for s in decoded], rows.TYPES[rows.FRAME_COUNT]))
                 .append_column(rows.FRAME_SIZES, pa.array([[list(f.source_size) for f in s] for s in decoded],
                                                          rows.TYPES[rows.FRAME_SIZES]))
                 .append_column(rows.FRAME_PIXEL_HASHES, pa.array([[f.pixel_hash for f in s] for s in decoded],
                                                                 rows.TYPES[rows.FRAME_PIXEL_HASHES]))
                 .append_column(rows.FRAME_PERCEPTUAL_HASHES,
                                pa.array([[f.perceptual_hash for f in s] for s in decoded],
                                         rows.TYPES[rows.FRAME_PERCEPTUAL_HASHES])))
        return rows.stamped(batch.append_column(rows.PREVIEW, preview_column(batch, self.previews)), "decode")

    def _sample(self, frames: Optional[list], i: int, errors: list) -> list[Frame]:
        """A sample's decoded frames; none when it failed here (its reason set in `errors`) or before."""
        if errors[i] is not None:
            return []
        try:
            return decode_sample(frames, self.spec)
        except FrameError as exc:
            errors[i] = f"decode: {exc}"
            return []
