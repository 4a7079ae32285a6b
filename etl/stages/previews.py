"""The run report's contact sheet: which rows get a preview, the decode stage's small JPEG of
their first frame, and the write stage's records of them for the driver."""

import base64
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.stages import rows

CONTACT_SHEET_SAMPLES = 24
PREVIEW_PIXELS = 160  # longest side
_RECORD_FIELDS = (rows.SAMPLE_ID, rows.SHARD, rows.ROW, rows.CAPTION, rows.QUALITY, rows.AESTHETICS,
                  rows.CAPTION_PARSE_ERROR, rows.FRAME_COUNT, rows.CLIP_SCORE_CAPTION, rows.CLIP_SCORE_TEXT)


@dataclass(frozen=True)
class PreviewRows:
    """Which rows get a contact-sheet preview: the first `rows` of each of `shards`."""

    shards: tuple[int, ...] = ()
    rows: int = 0


def preview_rows(shards: list[int], rows_per_shard: dict[int, int], wanted: int) -> PreviewRows:
    """About `wanted` rows from shards spread evenly over the run, so the report's memory does
    not grow with the dataset."""
    nonempty = [s for s in shards if rows_per_shard.get(s, 0)]
    if not nonempty or wanted <= 0:
        return PreviewRows()
    count = min(wanted, len(nonempty))
    picked = dict.fromkeys(nonempty[round(i * (len(nonempty) - 1) / max(1, count - 1))] for i in range(count))
    return PreviewRows(tuple(picked), -(-wanted // len(picked)))


def preview_column(batch: pa.Table, chosen: PreviewRows) -> pa.Array:
    """A small JPEG of the first captioner view of the chosen good rows; null elsewhere."""
    if not chosen.shards:
        return pa.nulls(batch.num_rows, pa.binary())
    wanted = pc.and_(pc.and_(pc.is_in(batch.column(rows.SHARD), pa.array(chosen.shards, pa.int64())),
                             pc.less(batch.column(rows.ROW), chosen.rows)),
                     pc.and_(pc.is_null(batch.column(rows.ERROR)),
                             pc.greater(pc.list_value_length(batch.column(rows.CAPTION_FRAMES)), 0)))
    previews = [None] * batch.num_rows
    views = batch.column(rows.CAPTION_FRAMES)
    for i in np.flatnonzero(np.asarray(wanted)):  # a handful of rows per run
        previews[i] = _preview_jpeg(views[int(i)][0].as_py())
    return pa.array(previews, pa.binary())


def _preview_jpeg(view: dict) -> bytes:
    from PIL import Image

    image = Image.frombuffer("RGB", (view["width"], view["height"]), view["pixels"])
    image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def preview_records(batch: pa.Table) -> list[dict]:
    """The previewed rows of a batch reaching the write stage, as the report's records."""
    chosen = batch.filter(pc.is_valid(batch.column(rows.PREVIEW)))
    if not chosen.num_rows:
        return []
    records = chosen.select([f for f in _RECORD_FIELDS if f in chosen.schema.names]).to_pylist()
    for record, jpeg in zip(records, chosen.column(rows.PREVIEW).to_pylist()):
        record["jpeg"] = base64.b64encode(jpeg).decode()
    return records
