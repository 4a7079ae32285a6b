import numpy as np
import pyarrow as pa
import pytest

import etl
from etl.mds import MDSWriter
from etl.sources.mds_datasource import MDSDatasource
from etl.sources.read_options import ReadOptions
from tests.mds_cases import jpeg_bytes


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    """Tens of shards of multi-frame samples, zstd-compressed."""
    path = tmp_path_factory.mktemp("mds")
    rng = np.random.default_rng(0)
    frames = [jpeg_bytes(rng, size=(64, 48)) for _ in range(16)]
    with MDSWriter(str(path), columns={"id": "int", "caption": "str", "frames": "jpeg_array"},
                   compression="zstd", size_limit=60_000) as writer:
        for i in range(120):
            writer.write({"id": i, "caption": f"a photo number {i}",
                          "frames": [frames[(i + k) % 16] for k in range(5 + i % 6)]})
    return path


def test_every_row_carries_provenance_and_all_samples_arrive(dataset_path, ray_local):
    source = MDSDatasource(str(dataset_path))
    rows = etl.read_mds(str(dataset_path)).take_all()
    assert len(rows) == sum(e.samples for e in source.entries) == 120
    assert sorted(r["id"] for r in rows) == list(range(120))
    expected = [(e.index, j) for e in source.entries for j in range(e.samples)]
    assert sorted((r["shard"], r["row"]) for r in rows) == expected
    assert all(r["mds_error"] is None for r in rows)


@pytest.mark.parametrize("spec", ["2:5", [0, 3, 7]])
def test_shard_ranges_and_lists(dataset_path, ray_local, spec):
    rows = etl.read_mds(str(dataset_path), shards=spec, columns=["id"]).take_all()
    wanted = range(2, 5) if isinstance(spec, str) else spec
    assert {r["shard"] for r in rows} == set(wanted)
    assert set(rows[0]) == {"shard", "row", "id", "mds_error"}


def test_read_tasks_hold_a_bounded_number_of_shards_and_are_pure(dataset_path):
    source = MDSDatasource(str(dataset_path), ReadOptions(shards_per_task=2))
    count = len(source.entries)
    assert count > 4
    tasks = source.get_read_tasks(parallelism=1)
    assert len(tasks) == (count + 1) // 2
    assert all(len(t.metadata.input_files) <= 2 for t in tasks)
    again = source.get_read_tasks(parallelism=200)
    assert [t.metadata.input_files for t in again] == [t.metadata.input_files for t in tasks]
    tight = MDSDatasource(str(dataset_path), ReadOptions(shards_per_task=4, max_bytes_per_task=1))
    assert len(tight.get_read_tasks(parallelism=1)) == count
    assert source.num_read_tasks() == len(tasks) and tight.num_read_tasks() == count


def test_size_bytes_is_an_honest_estimate_of_the_decoded_blocks(dataset_path):
    source = MDSDatasource(str(dataset_path), ReadOptions(shards_per_task=1))
    compressed = sum(e.stored.bytes for e in source.entries)
    for task in source.get_read_tasks(parallelism=1):
        actual = sum(block.nbytes for block in task())
        ratio = task.metadata.size_bytes / actual
        assert 0.9 <= ratio <= 1.25, f"estimate {task.metadata.size_bytes} vs decoded {actual}"
    # and it is the decoded size, not the (smaller) compressed file size
    assert source.estimate_inmemory_data_size() > compressed


def test_columns_are_checked_up_front(dataset_path):
    with pytest.raises(ValueError, match=r"shard 0 has no column 'nope'; its columns are \['caption', 'frames', 'id'\]"):
        MDSDatasource(str(dataset_path), ReadOptions(columns=["nope"]))
    assert MDSDatasource(str(dataset_path), ReadOptions(columns=["frames"])).schema.field("frames").type == pa.list_(pa.large_binary())


def test_provenance_name_collisions_are_refused(tmp_path):
    with MDSWriter(str(tmp_path), columns={"row": "int", "x": "int"}) as writer:
        writer.write({"row": 1, "x": 2})
    with pytest.raises(ValueError, match=r"column\(s\) \['row'\] collide with the columns read_mds adds"):
        MDSDatasource(str(tmp_path))
    assert MDSDatasource(str(tmp_path), ReadOptions(columns=["x"])).schema.names == ["shard", "row", "x", "mds_error"]


def test_tensor_columns_batch_to_numpy_without_python_objects(tmp_path, ray_local):
    with MDSWriter(str(tmp_path), columns={"latent": "ndarray:float32:4,2,2"}) as writer:
        for i in range(6):
            writer.write({"latent": np.full((4, 2, 2), i, np.float32)})
    batch = next(iter(etl.read_mds(str(tmp_path)).iter_batches(batch_size=6, batch_format="numpy")))
    assert batch["latent"].dtype == np.float32 and batch["latent"].shape == (6, 4, 2, 2)
    assert sorted(batch["latent"][:, 0, 0, 0].tolist()) == [0, 1, 2, 3, 4, 5]


def test_shards_stream_out_as_bounded_blocks_with_exact_row_provenance(dataset_path):
    source = MDSDatasource(str(dataset_path), ReadOptions(shards_per_task=1, block_bytes=20_000))
    blocks = [block for task in source.get_read_tasks(parallelism=1) for block in task()]
    assert len(blocks) > 2 * len(source.entries)  # shards were cut into several blocks
    assert max(b.nbytes for b in blocks) < 20_000 + 60_000  # a block passes the target by < 1 sample
    rows = [r for b in blocks for r in b.select(["shard", "row", "id"]).to_pylist()]
    expected = [(e.index, j) for e in source.entries for j in range(e.samples)]
    assert [(r["shard"], r["row"]) for r in rows] == expected
    assert [r["id"] for r in rows] == list(range(120))  # written in order, so ids follow (shard, row)
