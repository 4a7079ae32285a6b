import numpy as np
import pyarrow as pa
import pytest

from etl.ingest import read_samples
from tests.samples_tables import (EMBEDDING_DIM, LATENT_SHAPE, TEXT_STATES, WITH_TEXT_STATES, aesthetics_of,
                                  commit_samples, frames_of, quality_of, sample_rows, text_states_of)

FIRST, SECOND = 20, 12  # rows of shard 0 (version 0) and shard 1 (version 1)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """An output dir whose samples table has two commits: shard 0, then shard 1."""
    root = str(tmp_path_factory.mktemp("curated"))
    assert commit_samples(root, sample_rows(0, FIRST)) == 0
    assert commit_samples(root, sample_rows(1, SECOND)) == 1
    return root


def _ids(shard, rows):
    return sorted(f"{shard:06d}:{r:06d}" for r in rows)


def _column(dataset, name):
    return sorted(r[name] for r in dataset.select_columns([name]).take_all())


def test_latest_version_is_resolved_to_a_number(output, ray_local):
    snapshot = read_samples(output, columns=["sample_id"])
    assert (snapshot.version, snapshot.latest_version) == (1, 1)
    assert snapshot.path == f"{output}/samples"
    assert _column(snapshot.dataset, "sample_id") == _ids(0, range(FIRST)) + _ids(1, range(SECOND))


def test_pinned_version_ignores_later_commits(tmp_path, ray_local):
    root = str(tmp_path)
    commit_samples(root, sample_rows(0, 6))
    commit_samples(root, sample_rows(1, 5))
    old = read_samples(root, version=0, columns=["sample_id"])
    latest = read_samples(root, columns=["sample_id"])
    assert (old.version, old.latest_version, latest.version) == (0, 1, 1)
    assert _column(old.dataset, "sample_id") == _ids(0, range(6))
    commit_samples(root, sample_rows(2, 4))  # lands after the datasets were made: neither sees it
    assert _column(old.dataset, "sample_id") == _ids(0, range(6))
    assert _column(latest.dataset, "sample_id") == _ids(0, range(6)) + _ids(1, range(5))
    assert read_samples(root, columns=["sample_id"]).version == 2


def test_score_filters_keep_rows_at_or_above_the_bounds_and_drop_null_scores(output, ray_local):
    snapshot = read_samples(output, version=0, min_quality=3, columns=["sample_id", "quality"])
    rows = snapshot.dataset.take_all()
    expected = _ids(0, [r for r in range(FIRST) if quality_of(r) is not None and quality_of(r) >= 3])
    assert sorted(r["sample_id"] for r in rows) == expected
    assert all(r["quality"] >= 3 for r in rows)

    both = read_samples(output, version=0, min_quality=2, min_aesthetics=4, columns=["sample_id"])
    assert _column(both.dataset, "sample_id") == _ids(0, [
        r for r in range(FIRST) if quality_of(r) is not None and quality_of(r) >= 2
        and aesthetics_of(r) is not None and aesthetics_of(r) >= 4])
    # the lowest bound still drops unscored rows: there is nothing to compare
    scored = read_samples(output, version=0, min_quality=1, columns=["sample_id"])
    assert _column(scored.dataset, "sample_id") == _ids(0, [r for r in range(FIRST) if quality_of(r) is not None])
    assert read_samples(output, version=0, columns=["sample_id"]).dataset.count() == FIRST


def test_columns_are_returned_in_the_order_asked_and_filter_columns_are_not_added(output, ray_local):
    snapshot = read_samples(output, min_quality=4, columns=["frame_count", "sample_id", "bucket"])
    assert snapshot.columns == ("frame_count", "sample_id", "bucket")
    assert snapshot.dataset.schema().names == ["frame_count", "sample_id", "bucket"]
    every = read_samples(output, version=0)
    assert every.columns == tuple(sample_rows(0, 1).schema.names)
    row = next(r for r in every.dataset.take_all() if r["row"] == 4)
    assert (row["sample_id"], row["caption"], row["frame_count"], row["quality"]) == ("000000:000004", "sample 0:4",
                                                                                     frames_of(4), quality_of(4))
    assert [list(size) for size in row["frame_sizes"]] == [[32, 24]] * frames_of(4)  # metadata lists, as stored
    assert row["latents"].shape == LATENT_SHAPE


def test_iter_torch_batches_yields_fixed_shape_float_tensors(output, ray_local):
    import torch

    snapshot = read_samples(output, version=0, columns=["sample_id", "embedding", "latents", "frame_embeddings",
                                                         "quality", "frame_count"])
    assert snapshot.tensor_shapes == {"embedding": (EMBEDDING_DIM,), "latents": LATENT_SHAPE,
                                      "frame_embeddings": (EMBEDDING_DIM,)}
    tensors = snapshot.dataset.drop_columns(["sample_id"])
    batches = list(tensors.iter_torch_batches(batch_size=8))
    assert sum(len(b["embedding"]) for b in batches) == FIRST
    for batch in batches:
        rows = len(batch["quality"])
        assert batch["embedding"].shape == (rows, EMBEDDING_DIM) and batch["embedding"].dtype == torch.float32
        assert batch["latents"].shape == (rows, *LATENT_SHAPE) and batch["latents"].dtype == torch.float32
        assert batch["frame_embeddings"].shape == (rows, EMBEDDING_DIM)
        assert batch["frame_count"].dtype == torch.int32
    # the values are the stored ones: the pooled embedding and each sample's first frame
    written = sample_rows(0, FIRST)
    by_id = {r["sample_id"]: r for r in snapshot.dataset.take_all()}
    first_frames = written.column("latents").combine_chunks()
    offsets = np.asarray(first_frames.offsets)
    all_latents = first_frames.flatten().to_numpy_ndarray()
    embeddings = written.column("embedding").combine_chunks().to_numpy_ndarray()
    for i, sample_id in enumerate(written.column("sample_id").to_pylist()):
        np.testing.assert_array_equal(by_id[sample_id]["embedding"], embeddings[i])
        np.testing.assert_array_equal(by_id[sample_id]["latents"], all_latents[offsets[i]])


def test_caption_tensors_come_back_ready_for_torch(tmp_path, ray_local):
    import torch

    root = str(tmp_path)
    commit_samples(root, sample_rows(3, 10, schema=WITH_TEXT_STATES))
    snapshot = read_samples(root, columns=["sample_id", "embedding", "caption_embedding", "clip_score_caption",
                                           "caption_text_states", "caption_text_mask"])
    assert snapshot.tensor_shapes == {"embedding": (EMBEDDING_DIM,), "caption_embedding": (EMBEDDING_DIM,),
                                      "caption_text_states": TEXT_STATES, "caption_text_mask": TEXT_STATES[:1]}
    batches = list(snapshot.dataset.drop_columns(["sample_id"]).iter_torch_batches(batch_size=4))
    assert sum(len(b["caption_text_states"]) for b in batches) == 10
    for batch in batches:
        rows = len(batch["clip_score_caption"])
        assert batch["caption_text_states"].shape == (rows, *TEXT_STATES)
        assert batch["caption_text_states"].dtype == torch.float32
        assert batch["caption_text_mask"].shape == (rows, TEXT_STATES[0]) and batch["caption_text_mask"].dtype == torch.int8
        np.testing.assert_allclose(torch.sum(batch["embedding"] * batch["caption_embedding"], dim=1).numpy(),
                                   batch["clip_score_caption"].numpy(), rtol=1e-5, atol=1e-6)
    states, masks = text_states_of(3, 10)
    by_id = {r["sample_id"]: r for r in snapshot.dataset.take_all()}
    for row in range(10):
        got = by_id[f"{3:06d}:{row:06d}"]
        np.testing.assert_array_equal(got["caption_text_states"], states[row])
        np.testing.assert_array_equal(got["caption_text_mask"], masks[row])


def test_filtered_rows_and_duplicates_are_left_out_unless_asked_for(tmp_path, ray_local):
    from etl.sinks.bucket_files import write_bucket_files
    from etl.sinks.delta_commits import commit_files
    from schemas.tables import duplicates_schema

    root = str(tmp_path)
    rows = sample_rows(4, 12, filtered_by=[["quality"] if r % 4 == 0 else [] for r in range(12)])
    commit_samples(root, rows)
    ids = rows.column("sample_id").to_pylist()
    assert _column(read_samples(root).dataset, "sample_id") == sorted(i for r, i in enumerate(ids) if r % 4)
    assert len(_column(read_samples(root, apply_filters=False).dataset, "sample_id")) == 12
    with pytest.raises(FileNotFoundError, match="jobs.dedup"):
        read_samples(root, drop_duplicates=True)
    # a dedup pass marked rows 1 and 2 (as the run that wrote them) and row 3 as another run's row
    marked = pa.table({"sample_id": [ids[1], ids[2], ids[3]], "bucket": rows.column("bucket").take([1, 2, 3]),
                       "kind": ["exact", "near", "near"], "duplicate_of": [ids[0]] * 3,
                       "hamming": pa.array([0, 2, 1], pa.int32()), "cosine": pa.array([None] * 3, pa.float32()),
                       "sample_run_id": ["run-test", "run-test", "an-older-run"], "samples_version": [0] * 3,
                       "dedup_run_id": ["d"] * 3})
    uri = f"{root}/duplicates"
    commit_files(uri, duplicates_schema(), write_bucket_files(marked, duplicates_schema(), uri, "t"), {})
    kept = _column(read_samples(root).dataset, "sample_id")  # the run's filters.drop_duplicates: not recorded here
    assert kept == sorted(i for r, i in enumerate(ids) if r % 4)
    dropped = _column(read_samples(root, drop_duplicates=True).dataset, "sample_id")
    assert dropped == sorted(i for r, i in enumerate(ids) if r % 4 and r not in (1, 2))


def test_frames_n_pads_per_frame_tensors_with_zeros(output, ray_local):
    snapshot = read_samples(output, version=0, columns=["sample_id", "latents", "frame_count"], frames=2)
    assert snapshot.tensor_shapes == {"latents": (2, *LATENT_SHAPE)}
    written = sample_rows(0, FIRST).column("latents").combine_chunks()
    offsets, every = np.asarray(written.offsets), written.flatten().to_numpy_ndarray()
    for row in snapshot.dataset.take_all():
        r = int(row["sample_id"].split(":")[1])
        latents = row["latents"]
        assert latents.shape == (2, *LATENT_SHAPE) and row["frame_count"] == frames_of(r)
        kept = min(2, frames_of(r))
        np.testing.assert_array_equal(latents[:kept], every[offsets[r]:offsets[r] + kept])
        assert not latents[kept:].any()


def test_bad_arguments_name_what_is_allowed(output, tmp_path):
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['latent', 'score'\]; the samples table has: "
                                         r"sample_id, shard, row, bucket, caption, quality"):
        read_samples(output, columns=["latent", "embedding", "score"])
    with pytest.raises(ValueError, match=r"version 7 does not exist: the latest version of .*samples is 1"):
        read_samples(output, version=7)
    with pytest.raises(ValueError, match=r"version -1 does not exist"):
        read_samples(output, version=-1)
    with pytest.raises(FileNotFoundError, match=rf"no Delta table at {tmp_path}/samples"):
        read_samples(str(tmp_path))
    with pytest.raises(ValueError, match=r"frames=0; allowed: 'first' or a positive int"):
        read_samples(output, frames=0)
    with pytest.raises(ValueError, match=r"min_quality=nan; expected a number"):
        read_samples(output, min_quality=float("nan"))
    with pytest.raises(ValueError, match=r"columns='sample_id': pass a non-empty list"):
        read_samples(output, columns="sample_id")


def test_shapes_come_from_the_caller_for_tables_that_do_not_record_them(tmp_path, monkeypatch, ray_local):
    from etl.sinks import delta_commits
    from schemas.tables import storage_schema

    # a table as the writers made it before tensor shapes went into the schema's field metadata
    monkeypatch.setattr(delta_commits, "storage_schema", lambda s: pa.schema(
        [f.remove_metadata() for f in storage_schema(s)], metadata=s.metadata))
    commit_samples(str(tmp_path), sample_rows(0, 5))
    with pytest.raises(ValueError, match=r"does not record the shape of \['latents'\].*pass tensor_shapes="):
        read_samples(str(tmp_path), columns=["latents"])
    assert read_samples(str(tmp_path), columns=["sample_id"]).dataset.count() == 5  # no tensors: nothing needed
    snapshot = read_samples(str(tmp_path), columns=["embedding", "latents"],
                            tensor_shapes={"embedding": (EMBEDDING_DIM,), "latents": LATENT_SHAPE})
    batch = next(iter(snapshot.dataset.iter_batches(batch_size=5)))
    assert batch["latents"].shape == (5, *LATENT_SHAPE) and batch["embedding"].shape == (5, EMBEDDING_DIM)
    wrong = read_samples(str(tmp_path), columns=["latents"], tensor_shapes={"latents": (2, 2, 2)})
    with pytest.raises(Exception, match=r"a stored latents tensor has 16 values; its shape \(2, 2, 2\) needs 8"):
        wrong.dataset.take_all()


def test_recorded_shapes_win_over_contradicting_ones(output):
    with pytest.raises(ValueError, match=r"tensor_shapes\['latents'\]=\(8, 2\) but the table records \(4, 2, 2\)"):
        read_samples(output, columns=["latents"], tensor_shapes={"latents": (8, 2)})


def test_reads_a_pinned_version_from_s3(bucket, ray_local):
    output = f"{bucket}/curated"
    commit_samples(output, sample_rows(0, 8))
    commit_samples(output, sample_rows(1, 6))
    snapshot = read_samples(output, version=0, min_quality=2, columns=["sample_id", "embedding", "latents"])
    assert (snapshot.version, snapshot.latest_version) == (0, 1)
    rows = snapshot.dataset.take_all()
    assert sorted(r["sample_id"] for r in rows) == _ids(0, [r for r in range(8)
                                                           if quality_of(r) is not None and quality_of(r) >= 2])
    assert all(r["latents"].shape == LATENT_SHAPE for r in rows)
