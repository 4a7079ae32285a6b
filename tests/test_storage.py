"""The filesystem layer, including the non-local code paths (no mmap, no rename) that object
stores take. Real S3 is exercised against a loopback server in the S3 issue's tests."""

import os

import pyarrow.fs as pafs
import pytest

from etl import storage
from etl.mds import MDSWriter, ShardReader, load_index
from etl.sources.mds_datasource import MDSDatasource
from etl.sources.read_options import ReadOptions


def test_local_paths_resolve_to_a_memory_mapping_filesystem(tmp_path):
    fs, path = storage.resolve(str(tmp_path / "a" / ".." / "b"))
    assert storage.is_local(fs) and path == str(tmp_path / "b")
    assert storage.resolve(f"file://{tmp_path}")[1] == str(tmp_path)
    storage.write_file(fs, storage.join(path, "x.bin"), b"abc")
    data, size = storage.read_file(fs, storage.join(path, "x.bin"))
    assert (data.to_pybytes(), size) == (b"abc", 3)
    assert os.listdir(path) == ["x.bin"]  # the temporary file was renamed into place


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_mds_round_trip_on_a_non_local_filesystem(compression):
    fs = pafs._MockFileSystem()  # in-memory, type "mock": read_buffer and direct writes, as on S3
    rows = [{"id": i, "caption": f"c{i}", "frames": [bytes([i]) * 5] * (i % 4)} for i in range(50)]
    with MDSWriter("bucket/data", columns={"id": "int", "caption": "str", "frames": "jpeg_array"},
                   compression=compression, hashes=["xxh64"], size_limit=300, filesystem=fs) as writer:
        for row in rows:
            writer.write(row)
    names = [i.path for i in fs.get_file_info(pafs.FileSelector("bucket/data"))]
    assert "bucket/data/index.json" in names and not [n for n in names if ".tmp-" in n]

    fs_, root = storage.resolve("s3://bucket/data", filesystem=fs)
    entries = load_index(fs_, root)
    reader = ShardReader(fs_, root, verify_hashes=["xxh64"])
    assert [r for e in entries for r in reader.read(e, ["id", "caption", "frames"]).to_pylist()] == [
        dict(row, mds_error=None) for row in rows]

    source = MDSDatasource("s3://bucket/data", ReadOptions(columns=["id"]), filesystem=fs)
    tasks = source.get_read_tasks(parallelism=4)
    assert all(path.startswith("mock://bucket/data/shard.") for t in tasks for path in t.metadata.input_files)
    got = [r for t in tasks for block in t() for r in block.to_pylist()]
    assert sorted(r["id"] for r in got) == list(range(50))


def test_an_error_that_names_no_path_is_given_the_path_and_keeps_its_class():
    with pytest.raises(FileNotFoundError) as caught:
        with storage.naming("writing", "s3://bucket/out/samples/part-1.parquet"):
            raise FileNotFoundError(2, "No such file or directory")  # as some layers raise it
    assert str(caught.value) == "writing s3://bucket/out/samples/part-1.parquet: No such file or directory"
    assert caught.value.errno == 2 and isinstance(caught.value.__cause__, FileNotFoundError)
    with pytest.raises(OSError, match=r"^committing to /t: Generic S3 error$"):
        with storage.naming("committing to", "/t"):
            raise OSError("Generic S3 error")  # delta-rs: no errno


def test_an_error_that_already_names_its_path_is_left_as_it_is(tmp_path):
    fs, root = storage.resolve(str(tmp_path))
    with pytest.raises(FileNotFoundError) as caught:
        storage.read_file(fs, f"{root}/missing.mds")
    assert str(caught.value).count(f"{root}/missing.mds") == 1 and "reading" not in str(caught.value)


def test_an_output_that_cannot_be_made_is_refused_naming_it_without_writing(tmp_path, bucket):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match=f"output {tmp_path}/a-file/out: {tmp_path}/a-file is a file"):
        storage.check_output_root(str(tmp_path / "a-file" / "out"))
    storage.check_output_root(str(tmp_path / "fresh" / "out"))
    assert not (tmp_path / "fresh").exists()
    storage.check_output_root(bucket + "/out")
    with pytest.raises(FileNotFoundError, match=r"output s3://no-such-bucket-[0-9a-f]+/out: bucket .* does not exist"):
        storage.check_output_root(f"s3://no-such-bucket-{os.urandom(3).hex()}/out")
