"""Compatibility with the reference library (mosaicml-streaming), both ways, for every encoding,
every compression, a merged index, empty shards and multi-frame columns."""

import filecmp
import json
import os

import pytest

import etl
from etl import storage
from etl.mds import MDSWriter, ShardReader, load_index
from tests.mds_cases import (
    ALL_COLUMNS, assert_rows_match, jpeg_bytes, make_samples, normalize_reference, read_reference,
    write_reference,
)

COMPRESSIONS = [None, "br", "bz2", "gz", "snappy", "zstd", "zstd:7"]
SIZE_LIMIT = 6000  # several shards of a few samples; sample 0 alone is bigger -> empty shard 0


@pytest.fixture(scope="module")
def samples():
    return make_samples(14, seed=1, big_first=True)


def _sorted_rows(dataset):
    return sorted(dataset.take_all(), key=lambda r: (r["shard"], r["row"]))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_reference_written_read_by_read_mds_and_written_back(tmp_path, ray_local, samples, compression):
    written = tmp_path / "reference"
    write_reference(written, samples, compression=compression, size_limit=SIZE_LIMIT,
                    hashes=["sha1", "xxh64"])
    reference_rows = read_reference(written)
    entries = json.loads((written / "index.json").read_text())["shards"]
    assert entries[0]["samples"] == 0 and len(entries) > 3, "fixture must include an empty shard"

    ours = _sorted_rows(etl.read_mds(str(written), allow_pickle=True, verify_hashes=["xxh64"]))
    assert [r["mds_error"] for r in ours] == [None] * len(samples)
    assert [(r["shard"], r["row"]) for r in ours] == [
        (i, j) for i, e in enumerate(entries) for j in range(e["samples"])]
    assert_rows_match(ours, reference_rows)

    # And back: what read_mds produced, written by write_mds, is read identically by the reference.
    out = tmp_path / "ours"
    etl.write_mds(etl.read_mds(str(written), allow_pickle=True), str(out), columns=ALL_COLUMNS,
                  compression=compression, hashes=["md5", "xxh3_64"], size_limit=SIZE_LIMIT)
    assert_rows_match(_sorted_rows(etl.read_mds(str(out), allow_pickle=True)), reference_rows)
    again = read_reference(out)
    for mine, theirs in zip(again, reference_rows):
        assert set(mine) == set(theirs)
    for i, (mine, theirs) in enumerate(zip(again, reference_rows)):
        for name, encoding in ALL_COLUMNS.items():
            assert normalize_reference(encoding, mine[name]) == normalize_reference(encoding, theirs[name]), (i, name)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_per_sample_writer_is_byte_identical_to_reference(tmp_path, samples, compression):
    write_reference(tmp_path / "ref", samples, compression=compression, size_limit=SIZE_LIMIT)
    with MDSWriter(str(tmp_path / "ours"), columns=ALL_COLUMNS, compression=compression,
                   size_limit=SIZE_LIMIT) as writer:
        for sample in samples:
            writer.write(sample)
    ref_index = json.loads((tmp_path / "ref" / "index.json").read_text())
    our_index = json.loads((tmp_path / "ours" / "index.json").read_text())
    if compression is None:
        assert ref_index == our_index
        names = sorted(os.listdir(tmp_path / "ref"))
        assert names == sorted(os.listdir(tmp_path / "ours"))
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "ref", tmp_path / "ours", names, shallow=False)
        assert mismatch == [] and errors == []
    else:
        # Compressed bytes depend on the compressor build; the raw shards must still be identical.
        for ref_shard, our_shard in zip(ref_index["shards"], our_index["shards"]):
            assert ref_shard["raw_data"] == our_shard["raw_data"]
            assert ref_shard["samples"] == our_shard["samples"]
    ours_read, reference_read = read_reference(tmp_path / "ours"), read_reference(tmp_path / "ref")
    assert len(ours_read) == len(reference_read) == len(samples)
    for mine, theirs in zip(ours_read, reference_read):
        for name, encoding in ALL_COLUMNS.items():
            assert normalize_reference(encoding, mine[name]) == normalize_reference(encoding, theirs[name])


def test_merged_index_with_subfolders(tmp_path, ray_local):
    from streaming.base.util import merge_index

    parts = {"alpha": make_samples(4, seed=2), "part-7": make_samples(5, seed=3)}
    for sub, part in parts.items():
        write_reference(tmp_path / sub, part, compression="zstd", size_limit=5000)
    merge_index(str(tmp_path), keep_local=True)
    index = json.loads((tmp_path / "index.json").read_text())
    assert {s["raw_data"]["basename"].split("/")[0] for s in index["shards"]} == set(parts)

    reference_rows = read_reference(tmp_path)
    ours = _sorted_rows(etl.read_mds(str(tmp_path), allow_pickle=True))
    assert len(ours) == 9
    assert_rows_match(ours, reference_rows)


def test_write_mds_output_is_a_merged_index_the_reference_reads(tmp_path, ray_local):
    import numpy as np
    import ray.data

    rng = np.random.default_rng(4)
    rows = [{"id": i, "caption": f"sample {i}", "frames": [jpeg_bytes(rng) for _ in range(5 + i % 6)]}
            for i in range(40)]
    dataset = ray.data.from_items(rows, override_num_blocks=4)
    columns = {"id": "int", "caption": "str", "frames": "jpeg_array"}
    shard_count = etl.write_mds(dataset, str(tmp_path / "out"), columns=columns, size_limit=400)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert len(index["shards"]) == shard_count > 1
    assert all("/" in s["raw_data"]["basename"] for s in index["shards"])

    got = read_reference(tmp_path / "out")
    by_id = {r["id"]: r for r in got}
    assert sorted(by_id) == list(range(40))
    for row in rows:
        mine = by_id[row["id"]]
        assert mine["caption"] == row["caption"]
        assert [frame.fp.getvalue() for frame in mine["frames"]] == row["frames"]


def test_shard_reader_without_ray_matches_reference(tmp_path, samples):
    write_reference(tmp_path, samples, compression="gz", size_limit=SIZE_LIMIT)
    fs, root = storage.resolve(str(tmp_path))
    reader = ShardReader(fs, root)
    ours = [row for entry in load_index(fs, root) for row in reader.read(entry, list(ALL_COLUMNS)).to_pylist()]
    assert_rows_match(ours, read_reference(tmp_path))
