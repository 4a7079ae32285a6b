"""The row contract between the stages: every column a stage reads or adds, by name and Arrow
type. A stage names its columns with these constants; `etl.pipeline` checks, before any work,
that each stage finds the columns it reads (`etl.stages.stage.check_contract`).

Columns starting with `_` are internal: no input column can collide with them, and the write
stage never writes them.
"""

import time

import numpy as np
import pyarrow as pa

from etl.transforms.frames import PIXEL_VIEW_TYPE

# From the read (`read_mds`): provenance and the reader's verdict
SHARD, ROW, MDS_ERROR = "shard", "row", "mds_error"

# Prepare
SAMPLE_ID, BUCKET = "sample_id", "bucket"
ERROR = "error"            # why the sample failed ("<stage>: <reason>"); null while it is good
FRAMES = "_frames"         # the encoded frames (an image column, or a list of images)
TEXT = "_text"             # the sample's text, for the captioner's prompt
FPS = "_fps"               # a sample's own timing (read.fps_column, read.frame_indices_column)
FRAME_INDICES = "_frame_indices"

# Decode: pixel views, one cell per frame (PIXEL_VIEW_TYPE: height, width, RGB bytes)
CAPTION_FRAMES = "caption_frames"   # the captioner's view of each frame
CROP_FRAMES = "crop_frames"         # the encoders' centre crop, or null where they cut it from the view
FRAME_COUNT, FRAME_SIZES = "frame_count", "frame_sizes"
FRAME_PIXEL_HASHES, FRAME_PERCEPTUAL_HASHES = "frame_pixel_hashes", "frame_perceptual_hashes"  # jobs.dedup's keys
PREVIEW = "_preview"                # a small JPEG of the first frame, for the report's contact sheet

# Caption
CAPTION, QUALITY, AESTHETICS, CAPTION_PARSE_ERROR = "caption", "quality", "aesthetics", "caption_parse_error"
ENGINE_STATS = "_engine_stats"      # JSON on a batch's first row: the captioner's counters over that batch

# Encode
EMBEDDING, FRAME_EMBEDDINGS, LATENTS = "embedding", "frame_embeddings", "latents"
# ... with the embedder's text tower (models.embedder.text_tower): the caption's embedding, and the
# cosines of the sample's image embedding with its caption's and with its own text's
CAPTION_EMBEDDING, CLIP_SCORE_CAPTION, CLIP_SCORE_TEXT = "caption_embedding", "clip_score_caption", "clip_score_text"
# ... with a text encoder (models.text_encoder): the caption's last hidden states and their mask,
# what a diffusion model is conditioned on
CAPTION_TEXT_STATES, CAPTION_TEXT_MASK = "caption_text_states", "caption_text_mask"

# What the write stage sends the driver: one message per file it wrote ("table" names its table),
# then one with the counts of the batch. The payload is JSON.
FILE, COUNTS = "file", "counts"
MESSAGE_SCHEMA = pa.schema([("kind", pa.string()), ("table", pa.string()), ("payload", pa.string())])

TYPES: dict[str, pa.DataType] = {
    SHARD: pa.int64(), ROW: pa.int64(), MDS_ERROR: pa.string(),
    SAMPLE_ID: pa.string(), BUCKET: pa.int32(), ERROR: pa.string(), FPS: pa.float64(),
    FRAME_INDICES: pa.list_(pa.int64()),
    CAPTION_FRAMES: pa.list_(PIXEL_VIEW_TYPE), CROP_FRAMES: pa.list_(PIXEL_VIEW_TYPE),
    FRAME_COUNT: pa.int32(), FRAME_SIZES: pa.list_(pa.list_(pa.int32(), 2)), PREVIEW: pa.binary(),
    FRAME_PIXEL_HASHES: pa.list_(pa.string()), FRAME_PERCEPTUAL_HASHES: pa.list_(pa.int64()),
    CLIP_SCORE_CAPTION: pa.float32(), CLIP_SCORE_TEXT: pa.float32(),
    CAPTION: pa.string(), QUALITY: pa.float32(), AESTHETICS: pa.float32(), CAPTION_PARSE_ERROR: pa.string(),
    ENGINE_STATS: pa.string(),
}

_DONE_AT, _RAN_ON = "_done_at_", "_ran_on_"


def done_at(stage: str) -> str:
    """The column of when each row left `stage` (unix s): the write stage turns every such
    column into per-second counts, the run report's samples/s per stage over time."""
    return _DONE_AT + stage


def ran_on(stage: str) -> str:
    """The column of where each row went through `stage`: "<node id>/<actor or task id>". The
    write stage counts rows per place, so the run summary shows where Ray ran each stage."""
    return _RAN_ON + stage


def stamp_types(stage: str) -> dict[str, pa.DataType]:
    """The columns `stamped` adds, for a stage's declared `adds`."""
    return {done_at(stage): pa.float64(), ran_on(stage): pa.dictionary(pa.int32(), pa.string())}


def stages_done_at(names) -> dict[str, str]:
    """{stage: its done-at column} for the done-at columns among `names`."""
    return {name[len(_DONE_AT):]: name for name in names if name.startswith(_DONE_AT)}


def stages_ran_on(names) -> dict[str, str]:
    """{stage: its ran-on column} for the ran-on columns among `names`."""
    return {name[len(_RAN_ON):]: name for name in names if name.startswith(_RAN_ON)}


def worker_place() -> str:
    """Where this code runs: "<node id>/<actor id>" in an actor, "<node id>/<task id>" in a task,
    "local/<pid>" outside Ray."""
    import os

    import ray

    if not ray.is_initialized():
        return f"local/{os.getpid()}"
    context = ray.get_runtime_context()
    return f"{context.get_node_id()}/{context.get_actor_id() or context.get_task_id()}"


def stamps(count: int, stage: str) -> dict[str, pa.Array]:
    """When and where `count` rows left `stage`, now and here."""
    place = pa.DictionaryArray.from_arrays(pa.array(np.zeros(count, np.int32)), pa.array([worker_place()]))
    return {done_at(stage): pa.array(np.full(count, time.time())), ran_on(stage): place}


def stamped(batch: pa.Table, stage: str) -> pa.Table:
    for name, column in stamps(batch.num_rows, stage).items():
        batch = batch.append_column(name, column)
    return batch
