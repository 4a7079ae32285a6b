"""What the curation job reads from its input, decided once on the driver from the index: the
frames column, the columns read, and the datasource with the job's read options, whose read
tasks the planner sizes. `jobs.plan` derives them with the same functions, so it prints the
plan the job runs."""

from typing import Optional, Sequence

from etl.config import JobConfig, ReadConfig
from etl.mds import ShardEntry
from etl.planner.memory import READ_BLOCK_BYTES
from etl.planner.units import MIB
from etl.sources.read_options import ReadOptions
from etl.sources.read_tasks import ReadTasks

IMAGE_ENCODINGS = ("jpeg", "png", "pil", "jpeg_array", "jpegarray", "list[jpeg]", "list[png]", "list[pil]")


def choose_image_column(encodings: dict[str, str], requested: Optional[str]) -> str:
    """The frames column: the one image-encoded column, or the one the user names."""
    candidates = sorted(name for name, encoding in encodings.items() if encoding in IMAGE_ENCODINGS)
    if requested is not None:
        if requested not in encodings:
            raise ValueError(f"--image-column {requested!r} is not a column; columns: {sorted(encodings)}")
        if encodings[requested] not in IMAGE_ENCODINGS:
            raise ValueError(f"--image-column {requested!r} is {encodings[requested]!r}; image columns must be "
                             f"one of {list(IMAGE_ENCODINGS)}")
        return requested
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(f"no image column: no column is encoded as one of {list(IMAGE_ENCODINGS)}; "
                         f"columns: {encodings}")
    raise ValueError(f"several image columns {candidates}: choose one with --image-column")


def read_columns(read: ReadConfig, encodings: dict, image_column: str) -> list[str]:
    """The input columns the job reads; a named one the input lacks is refused before any work."""
    named = {"read.text_column": read.text_column, "read.id_column": read.id_column,
             "read.fps_column": read.fps_column, "read.frame_indices_column": read.frame_indices_column}
    missing = [f"{key}={name!r}" for key, name in named.items() if name and encodings and name not in encodings]
    if missing:
        raise ValueError(f"{', '.join(missing)}: no such column in the input (its columns: {', '.join(encodings)})")
    return list(dict.fromkeys([image_column, *(name for name in named.values() if name)]))


def job_read_options(config: JobConfig, shards, columns: Optional[Sequence[str]]) -> ReadOptions:
    read = config.read
    return ReadOptions(shards=shards, columns=columns, verify_hashes=read.verify_hashes,
                       shards_per_task=read.shards_per_task, max_bytes_per_task=read.max_task_mb * MIB,
                       on_bad_shard="quarantine", block_bytes=READ_BLOCK_BYTES,
                       max_image_pixels=config.frames.max_image_pixels)


def job_source(config: JobConfig, index: Sequence[ShardEntry], shards):
    """(the job's `MDSDatasource` over `shards` of the already-read `index`, the frames column)."""
    from etl.sources.mds_datasource import MDSDatasource

    encodings = dict(zip(index[0].column_names, index[0].column_encodings)) if index else {}
    image_column = choose_image_column(encodings, config.read.image_column)
    columns = read_columns(config.read, encodings, image_column)
    return MDSDatasource(config.input, job_read_options(config, shards, columns), index=index), image_column


def assumed_read_tasks(config: JobConfig, sizes: Sequence[int]) -> ReadTasks:
    """The read tasks of shards of these decoded sizes, grouped as the job groups them."""
    options = job_read_options(config, None, None)
    return ReadTasks.of_sizes(range(len(sizes)), sizes, options.shards_per_task, options.max_bytes_per_task)
