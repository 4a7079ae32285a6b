"""The dedup pass on Ray, measured: a set of unrelated images (photos from matplotlib's sample
data in every orientation, and generated ones) with injected copies (the same file, a JPEG
re-encoded at another quality, a resized copy), hashed by the CPU stage's decode and embedded by
the tiny CLIP, written as a samples table. The test prints precision and recall per kind and
holds them to bounds; the incremental passes (new rows, a backfill) give what one pass over
everything gives under the same ranks.
"""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from matplotlib import cbook
from PIL import Image

from etl.config import DedupConfig
from etl.dedup.run import run_dedup
from etl.synthetic import copies_of, jpeg_frames
from etl.transforms.frames import FrameSpec, decode_sample
from schemas.tables import samples_schema
from tests.samples_tables import LATENT_SHAPE, commit_samples, sample_rows

PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
SPEC = FrameSpec(min_pixels=4096, max_pixels=224 * 224, crop_size=224)  # jobs/configs/local.yaml's
SCHEMA = samples_schema(16, LATENT_SHAPE)  # the tiny CLIP's width


def _jpeg(image: Image.Image, quality=90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _originals() -> list[bytes]:
    """Unrelated images: each photo in 8 orientations, 2 elevation maps as grey images, and
    generated photo-like frames of several sizes."""
    found = []
    for name in PHOTOS:
        photo = Image.open(cbook.get_sample_data(name, asfileobj=False)).convert("RGB")
        for mirror in (False, True):
            turned = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else photo
            found += [_jpeg(turned.rotate(angle, expand=True)) for angle in (0, 90, 180, 270)]
    for name in ("jacksboro_fault_dem.npz", "topobathy.npz"):
        with np.load(cbook.get_sample_data(name, asfileobj=False)) as data:
            values = data[data.files[0]].astype(np.float64)
        grey = (255 * (values - values.min()) / max(np.ptp(values), 1e-9)).astype(np.uint8)
        found.append(_jpeg(Image.fromarray(grey).convert("RGB")))
    for seed, (width, height) in enumerate([(320, 240), (640, 360), (256, 256), (480, 320)]):
        found += jpeg_frames(40, width, height, seed=100 + seed)
    return found


def _injected(seed: int = 0):
    """[(frames, family, kind)] in a shuffled order: every original, and copies of a third of
    them per kind; a tenth of the samples have 3 frames (a clip: each frame copied alike)."""
    rng = np.random.default_rng(seed)
    originals = _originals()
    samples = []
    for family, image in enumerate(originals):
        frames = [image] if family % 10 else [image, originals[(family + 1) % len(originals)],
                                              originals[(family + 2) % len(originals)]]
        samples.append((frames, family, "original"))
        for kind in ("exact", "reencoded", "resized"):
            if rng.random() < 1 / 3:
                samples.append(([copies_of(f, int(rng.integers(1 << 30)))[kind] for f in frames], family, kind))
    order = rng.permutation(len(samples))
    return [samples[i] for i in order]


def _table(samples, shard_size: int, tiny, run_id: str, shards=None) -> list[pa.Table]:
    """Samples rows per shard: the decode stage's hashes, the tiny CLIP's pooled embeddings."""
    from etl.models.encoders import FrameEncoders, pool_per_sample

    encoders = FrameEncoders(str(tiny["clip"]), str(tiny["vae"]))
    tables = []
    for shard, start in enumerate(range(0, len(samples), shard_size)):
        if shards is not None and shard not in shards:
            continue
        chunk = samples[start:start + shard_size]
        decoded = [decode_sample(frames, SPEC) for frames, _, _ in chunk]
        embeddings, _ = encoders.encode_views([f.caption_view for s in decoded for f in s], SPEC.crop_size)
        pooled = pool_per_sample(embeddings, np.array([len(s) for s in decoded]))
        hashes = ([[f.pixel_hash for f in s] for s in decoded], [[f.perceptual_hash for f in s] for s in decoded])
        tables.append(sample_rows(shard, len(chunk), run_id, SCHEMA, frames=[len(s) for s in decoded],
                                  hashes=hashes, embeddings=pooled))
    return tables


def _read(output: str, table: str) -> pa.Table:
    from deltalake import DeltaTable

    return DeltaTable(f"{output}/{table}").to_pyarrow_table()


def _scores(samples, shard_size: int, duplicates: pa.Table) -> dict:
    """Precision per detected kind and recall per injected kind. A flag is right when the
    sample and the copy it is marked against come from the same original."""
    family = {f"{i // shard_size:06d}:{i % shard_size:06d}": (fam, kind) for i, (_, fam, kind) in enumerate(samples)}
    flagged = {row["sample_id"]: row for row in duplicates.to_pylist()}
    scores = {}
    for kind in ("exact", "near", "semantic"):
        rows = [r for r in flagged.values() if r["kind"] == kind]
        right = sum(family[r["sample_id"]][0] == family[r["duplicate_of"]][0] for r in rows)
        scores[f"precision_{kind}"] = (right / len(rows) if rows else None, len(rows))
    for kind in ("exact", "reencoded", "resized"):
        copies = [sid for sid, (_, k) in family.items() if k == kind]
        members = {}
        for sid, (fam, _) in family.items():
            members.setdefault(fam, []).append(sid)
        # a copy is found when it, or the other member of its family it is ranked after, is flagged
        found = sum(sid in flagged or any(m in flagged and family[flagged[m]["duplicate_of"]][0] == family[sid][0]
                                          for m in members[family[sid][0]] if m != sid) for sid in copies)
        scores[f"recall_{kind}"] = (found / len(copies) if copies else None, len(copies))
    unrelated = sum(1 for r in flagged.values() if family[r["sample_id"]][0] != family[r["duplicate_of"]][0])
    scores["false_flags"] = (unrelated, len(samples))
    return scores


@pytest.fixture(scope="module")
def injected():
    return _injected()


def test_precision_and_recall_per_kind_on_injected_copies(injected, tiny, tmp_path, ray_local):
    output, shard_size = str(tmp_path), 64
    for table in _table(injected, shard_size, tiny, "run-1"):
        commit_samples(output, table)
    summary = run_dedup(output, DedupConfig(kinds=["exact", "near"], partitions=4))
    scores = _scores(injected, shard_size, _read(output, "duplicates"))
    print("\nhash detectors:", json.dumps({k: v for k, v in scores.items()}), summary.line())
    assert summary.samples == len(injected) and summary.judged == len(injected)
    assert scores["precision_exact"][0] == 1.0 and scores["recall_exact"][0] == 1.0
    assert scores["precision_near"][0] >= 0.98 and scores["recall_reencoded"][0] >= 0.95
    assert scores["recall_resized"][0] >= 0.95
    semantic = run_dedup(output, DedupConfig(kinds=["semantic"], partitions=4))
    semantic_scores = _scores(injected, shard_size, _read(output, "duplicates"))
    print("semantic only, tiny random-weight CLIP:", json.dumps(semantic_scores), semantic.line())
    assert semantic.pass_number == 2 and semantic.judged == len(injected)  # other settings: everything again


def _verdicts(output: str) -> dict:
    return {r["sample_id"]: (r["kind"], r["duplicate_of"]) for r in _read(output, "duplicates").to_pylist()}


def test_incremental_passes_and_a_backfill_match_one_pass_over_everything(injected, tiny, tmp_path, ray_local):
    from etl.sinks.bucket_files import write_bucket_files
    from etl.sinks.delta_commits import commit_files

    shard_size = 48
    config = DedupConfig(kinds=["exact", "near"], partitions=4)
    shards = _table(injected, shard_size, tiny, "run-1")
    half = len(shards) // 2
    incremental, single = str(tmp_path / "incremental"), str(tmp_path / "single")
    for table in shards[:half]:
        commit_samples(incremental, table)
    first = run_dedup(incremental, config)
    for table in shards[half:]:
        commit_samples(incremental, table)
    second = run_dedup(incremental, config)
    assert (first.new, second.new, second.judged - second.new) == (sum(t.num_rows for t in shards[:half]),
                                                                    sum(t.num_rows for t in shards[half:]),
                                                                    sum(first.duplicates.values()))
    seen = {r["sample_id"]: r["first_seen"] for r in _read(incremental, "dedup_seen").to_pylist()}
    assert sorted(set(seen.values())) == [1, 2] and len(seen) == len(injected)
    for table in shards:
        commit_samples(single, table)
    run_dedup(single, config)
    together = _verdicts(single)
    apart = _verdicts(incremental)
    # the first half was seen first in both (first_seen, then shard order): the same ranks, the same verdicts
    assert apart == together and len(apart) > 20
    # a backfill re-processes shard 0 (new run_id, the same pixels): its rows count as new
    uri = f"{incremental}/samples"
    backfill = _table(injected, shard_size, tiny, "run-backfill", shards={0})[0]
    commit_files(uri, backfill.schema, write_bucket_files(backfill, backfill.schema, uri, "backfill"),
                 {"run_id": "run-backfill"}, replace_shards=[0])
    third = run_dedup(incremental, config)
    assert third.reprocessed == backfill.num_rows and third.new == 0 and third.removed == 0
    after = _verdicts(incremental)
    duplicates = _read(incremental, "duplicates").to_pylist()
    samples = {(r["sample_id"], r["run_id"]) for r in _read(incremental, "samples").select(
        ["sample_id", "run_id"]).to_pylist()}
    assert all((r["sample_id"], r["sample_run_id"]) in samples for r in duplicates)  # every verdict is of a live row
    assert all(r["samples_version"] == third.samples_version for r in duplicates)
    assert set(after) | {v[1] for v in after.values()} <= {s for s, _ in samples}
    # each family keeps exactly one exact copy: no sample is marked against a duplicate of its own pixels
    exact = {k: v[1] for k, v in after.items() if v[0] == "exact"}
    assert not set(exact.values()) & set(exact)
