"""Hostile input (MDS_FORMAT.md): every case gets a clear error naming the file and the problem,
and a bad sample inside a good shard only marks its own row."""

import json
import os

import numpy as np
import pytest

import etl
from etl import storage
from etl.mds import MDSError, ShardReader, UnsafeEncodingError, load_index
from etl.sources.mds_datasource import MDSDatasource
from etl.sources.read_options import ReadOptions
from tests.mds_cases import jpeg_bytes, write_reference

COLUMNS = {"id": "int", "caption": "str", "frames": "jpeg_array", "image": "pil"}


def _samples(count, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [{"id": i, "caption": f"caption {i}", "frames": [jpeg_bytes(rng) for _ in range(5)],
             "image": Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))}
            for i in range(count)]


def _dataset(path, samples=None, columns=COLUMNS, **kwargs):
    write_reference(path, samples or _samples(6), columns=columns, **kwargs)
    return path


def _edit_index(path, change):
    index = json.loads((path / "index.json").read_text())
    change(index)
    (path / "index.json").write_text(json.dumps(index))


def _read_all(path, **kwargs):
    fs, root = storage.resolve(str(path))
    reader = ShardReader(fs, root, **kwargs)
    return [reader.read(entry, list(entry.column_names)) for entry in load_index(fs, root)]


def _shard_file(path, number=0, suffix=".mds"):
    return path / f"shard.{number:05}{suffix}"


def test_pickle_column_is_refused_unless_opted_in(tmp_path):
    path = _dataset(tmp_path, [{"id": 1, "blob": {"x": 1}}], columns={"id": "int", "blob": "pkl"})
    with pytest.raises(UnsafeEncodingError, match=r"column 'blob' is pickled \(pkl\).*allow_pickle=True"):
        MDSDatasource(str(path))
    assert MDSDatasource(str(path), ReadOptions(columns=["id"])).schema.names == ["shard", "row", "id", "mds_error"]
    allowed = MDSDatasource(str(path), ReadOptions(allow_pickle=True))
    assert "blob" in allowed.schema.names


@pytest.mark.parametrize("basename", ["../escape.mds", "/etc/passwd", "a/../../b.mds", "a//b.mds", "C:\\x.mds"])
def test_unsafe_basenames_are_refused(tmp_path, basename):
    path = _dataset(tmp_path)
    _edit_index(path, lambda index: index["shards"][0]["raw_data"].update(basename=basename))
    with pytest.raises(MDSError, match=r"index\.json shard 0: unsafe basename") as info:
        MDSDatasource(str(path))
    assert str(tmp_path) in str(info.value)


def test_offsets_past_the_end_of_the_file(tmp_path):
    path = _dataset(tmp_path, size_limit=None)
    data = bytearray(_shard_file(path).read_bytes())
    count = int.from_bytes(data[:4], "little")
    data[4 + 4 * count: 8 + 4 * count] = (len(data) + 100).to_bytes(4, "little")
    _shard_file(path).write_bytes(bytes(data))
    with pytest.raises(MDSError, match=r"shard\.00000\.mds: offsets end at byte \d+ but the file is"):
        _read_all(path)


def test_offsets_not_increasing(tmp_path):
    path = _dataset(tmp_path, size_limit=None)
    data = bytearray(_shard_file(path).read_bytes())
    data[8:12] = (10**6).to_bytes(4, "little")  # sample 1 starts after sample 2
    _shard_file(path).write_bytes(bytes(data))
    with pytest.raises(MDSError, match=r"shard\.00000\.mds: offsets are not increasing: sample 1 starts at 1000000, sample 2 at"):
        _read_all(path)


def test_sample_count_disagreeing_with_the_index(tmp_path):
    path = _dataset(tmp_path, size_limit=None)
    _edit_index(path, lambda index: index["shards"][0].update(samples=7))
    with pytest.raises(MDSError, match=r"file holds 6 samples but index.json says 7"):
        _read_all(path)


def test_truncated_file(tmp_path):
    path = _dataset(tmp_path, size_limit=None)
    data = _shard_file(path).read_bytes()
    _shard_file(path).write_bytes(data[:-10])
    with pytest.raises(MDSError, match=rf"file is {len(data) - 10} bytes but index.json says {len(data)}"):
        _read_all(path)


def test_wrongly_compressed_file(tmp_path):
    path = _dataset(tmp_path, compression="zstd", size_limit=None)
    zipped = _shard_file(path, suffix=".mds.zstd")
    zipped.write_bytes(os.urandom(zipped.stat().st_size))
    with pytest.raises(MDSError, match=r"shard\.00000\.mds\.zstd: cannot decompress: not valid zstd data"):
        _read_all(path)


def test_decompression_bomb_stops_at_the_declared_size(tmp_path):
    import cramjam

    path = _dataset(tmp_path, compression="zstd", size_limit=None)
    raw = bytes(cramjam.zstd.decompress(_shard_file(path, suffix=".mds.zstd").read_bytes()))
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    compressor = cramjam.zstd.Compressor(3)  # streamed, so building the bomb stays small too
    compressor.compress(raw)
    zeros = bytes(1 << 20)
    for _ in range(512):  # 512 MiB past the size index.json declares
        compressor.compress(zeros)
    bomb = bytes(compressor.finish())
    assert len(bomb) < 1 << 20
    _shard_file(path, suffix=".mds.zstd").write_bytes(bomb)
    _edit_index(path, lambda index: index["shards"][0]["zip_data"].update(bytes=len(bomb)))
    with pytest.raises(MDSError, match=r"decompresses past the \d+ bytes index.json declares"):
        _read_all(path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 << 10, f"reading the bomb grew peak RSS by {grown_kib} KiB"


def test_unknown_encoding(tmp_path):
    path = _dataset(tmp_path)
    _edit_index(path, lambda index: [s["column_encodings"].__setitem__(0, "webp") for s in index["shards"]])
    with pytest.raises(MDSError, match=r"column 'caption': unknown encoding 'webp'; allowed: \[.*'jpeg_array'"):
        MDSDatasource(str(path))


def test_column_size_that_lies_about_the_encoding(tmp_path):
    path = _dataset(tmp_path)
    _edit_index(path, lambda index: index["shards"][0]["column_sizes"].__setitem__(2, 4))  # id: int
    with pytest.raises(MDSError, match=r"column 'id' \(int\) has column_size 4, the encoding's size is 8"):
        MDSDatasource(str(path))


def test_unsupported_index_version(tmp_path):
    path = _dataset(tmp_path)
    _edit_index(path, lambda index: index.update(version=3))
    with pytest.raises(MDSError, match=r"index.json: index version 3 is not supported; only 2"):
        MDSDatasource(str(path))


def test_hash_mismatch_is_caught_only_when_asked(tmp_path):
    path = _dataset(tmp_path, hashes=["sha256", "xxh64"], size_limit=None)
    data = bytearray(_shard_file(path).read_bytes())
    data[-1] ^= 0xFF  # flip a byte inside the last sample's payload
    _shard_file(path).write_bytes(bytes(data))
    assert _read_all(path)[0].num_rows == 6
    with pytest.raises(MDSError, match=r"xxh64 checksum mismatch"):
        _read_all(path, verify_hashes=["xxh64"])
    with pytest.raises(MDSError, match=r"records no md5 hash for this shard"):
        _read_all(path, verify_hashes=["md5"])


def _sample_with_raw(column_payload_for_row, row=2):
    samples = _samples(5)
    samples[row] = dict(samples[row], **column_payload_for_row)
    return samples


def test_pil_header_claiming_huge_pixels_marks_only_its_row(tmp_path):
    # The reference writer stores bytes as-is, so a hostile writer can put any header here.
    liar = np.array([100000, 100000, 3], np.uint32).tobytes() + b"RGB" + b"\0" * 60
    path = _dataset(tmp_path, _sample_with_raw({"image": liar}), size_limit=None)
    table = _read_all(path)[0]
    errors = table.column("mds_error").to_pylist()
    assert errors[2] == "column 'image': pil header claims 100000x100000 pixels but carries 60 bytes"
    assert [e for i, e in enumerate(errors) if i != 2] == [None] * 4
    assert table.column("image")[2].as_py() is None
    assert table.column("frames")[2].as_py() is not None  # the other cells of the row survive
    assert table.column("image")[3].as_py()["width"] == 5


def test_jpeg_array_header_claiming_too_many_frames(tmp_path):
    liar = np.array([1000, 5, 5], np.uint32).tobytes() + b"x" * 10
    path = _dataset(tmp_path, _sample_with_raw({"frames": liar}), size_limit=None)
    table = _read_all(path)[0]
    assert table.column("mds_error")[2].as_py() == (
        "column 'frames': jpeg_array header truncated or claims more elements than its bytes hold")
    assert table.column("frames").null_count == 1
    assert len(table.column("frames")[3].as_py()) == 5


def test_invalid_utf8_marks_only_its_row(tmp_path):
    path = _dataset(tmp_path, _sample_with_raw({"caption": b"ok \xff\xfe bad"}), size_limit=None)
    table = _read_all(path)[0]
    assert table.column("mds_error").to_pylist() == [None, None, "column 'caption': not valid UTF-8", None, None]
    assert table.column("caption").to_pylist()[:2] == ["caption 0", "caption 1"]


def test_sample_whose_column_sizes_do_not_add_up(tmp_path):
    path = _dataset(tmp_path, size_limit=None)
    data = bytearray(_shard_file(path).read_bytes())
    count = int.from_bytes(data[:4], "little")
    second = int.from_bytes(data[8:12], "little")
    data[second: second + 4] = (10**7).to_bytes(4, "little")  # sample 1's first size field
    _shard_file(path).write_bytes(bytes(data))
    table = _read_all(path)[0]
    assert table.num_rows == count
    errors = table.column("mds_error").to_pylist()
    assert errors[1].startswith("sample's column sizes do not add up")
    assert errors[0] is None and errors[2] is None
    assert table.column("id")[1].as_py() is None and table.column("id")[2].as_py() == 2


def test_image_bombs_pass_as_bytes_or_become_error_rows_with_a_pixel_limit(tmp_path):
    # A PNG whose header claims 60000 x 60000 pixels (10.8 GB as RGB) and a JPEG frame claiming
    # the same. Pixels are never decoded here: without a limit they pass at their encoded size;
    # with `max_image_pixels` the header check turns them into error rows.
    import struct
    import zlib

    from etl.synthetic import claim_jpeg_size

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    png_bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    rng = np.random.default_rng(0)
    frame = jpeg_bytes(rng)
    samples = [{"id": 0, "img": png_bomb, "frames": [frame, frame]},
               {"id": 1, "img": png_bomb.replace(ihdr[:8], struct.pack(">II", 8, 8)), "frames": [frame]},
               {"id": 2, "img": png_bomb, "frames": [frame, claim_jpeg_size(frame, 60000, 60000)]}]
    path = _dataset(tmp_path, samples, columns={"id": "int", "img": "png", "frames": "jpeg_array"}, size_limit=None)
    table = _read_all(path)[0]
    assert table.column("img")[0].as_py() == png_bomb and table.nbytes < 16384
    assert table.column("mds_error").to_pylist() == [None, None, None]

    limited = _read_all(path, max_image_pixels=50_000_000)[0]
    claim = "image claims 60000x60000 pixels, over max_image_pixels=50000000 (decompression bomb?)"
    assert limited.column("mds_error").to_pylist() == [
        f"column 'img': {claim}", None, f"column 'frames': {claim}; column 'img': {claim}"]
    assert limited.column("img").to_pylist()[1] == samples[1]["img"]


def test_quarantine_mode_turns_a_bad_shard_into_error_rows(tmp_path, ray_local):
    path = _dataset(tmp_path, _samples(9), size_limit=2 * len(_samples(1)[0]["frames"][0]) * 5 + 500)
    index = json.loads((path / "index.json").read_text())
    assert len(index["shards"]) >= 3
    victim = index["shards"][1]
    (path / victim["raw_data"]["basename"]).write_bytes(b"\0" * 100)  # corrupt and truncated
    with pytest.raises(Exception, match=r"shard\.00001\.mds: file is 100 bytes but index.json says"):
        etl.read_mds(str(path)).take_all()
    rows = etl.read_mds(str(path), on_bad_shard="quarantine").take_all()
    assert len(rows) == 9
    bad = [r for r in rows if r["mds_error"]]
    assert len(bad) == victim["samples"]
    assert {r["shard"] for r in bad} == {1}
    assert sorted(r["row"] for r in bad) == list(range(victim["samples"]))
    assert all(r["mds_error"].startswith("unreadable shard: ") and "shard.00001.mds" in r["mds_error"] for r in bad)
    assert all(r["id"] is None for r in bad)


def test_shard_deleted_between_planning_and_reading(tmp_path, ray_local):
    path = _dataset(tmp_path, size_limit=None)
    dataset = etl.read_mds(str(path))  # index read, shards planned
    _shard_file(path).unlink()
    with pytest.raises(Exception, match=r"shard\.00000\.mds: shard file is missing \(index.json lists it as shard 0\)"):
        dataset.take_all()


def test_number_text_that_does_not_parse_or_is_not_utf8(tmp_path):
    samples = [{"n": 5}, {"n": b"12x"}, {"n": b"\xff1"}, {"n": str(2**70).encode()}, {"n": -3}]
    path = _dataset(tmp_path, samples, columns={"n": "str_int"}, size_limit=None)
    table = _read_all(path)[0]
    assert table.column("n").to_pylist() == [5, None, None, None, -3]
    assert table.column("mds_error").to_pylist() == [
        None, "column 'n': not a valid str_int value for int64", "column 'n': not valid UTF-8",
        "column 'n': not a valid str_int value for int64", None]


def test_a_broken_sample_nulls_tensor_and_list_cells_too(tmp_path, ray_local):
    from etl.mds import MDSWriter

    with MDSWriter(str(tmp_path), columns={"t": "ndarray:float32:2", "frames": "jpeg_array", "s": "str"},
                   size_limit=None) as writer:
        for i in range(3):
            writer.write({"t": np.array([i, i], np.float32), "frames": [b"x"] * i, "s": "ok"})
    data = bytearray(_shard_file(tmp_path).read_bytes())
    second = int.from_bytes(data[8:12], "little")
    data[second: second + 4] = (10**6).to_bytes(4, "little")
    _shard_file(tmp_path).write_bytes(bytes(data))
    import pyarrow as pa

    dataset = etl.read_mds(str(tmp_path))
    table = pa.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow")).sort_by("row")
    assert [e is None for e in table.column("mds_error").to_pylist()] == [True, False, True]
    assert [table.column(c)[1].is_valid for c in ("t", "frames", "s")] == [False, False, False]
    # Split off error rows first: then tensor columns convert to numpy as usual.
    from ray.data.expressions import col

    good = dataset.filter(expr=col("mds_error").is_null()).take_all()
    assert sorted(r["t"].tolist() for r in good) == [[0.0, 0.0], [2.0, 2.0]]


def test_quarantined_shard_rows_match_the_schema_of_every_encoding(tmp_path, ray_local):
    from tests.mds_cases import SAFE_COLUMNS, make_samples

    write_reference(tmp_path, make_samples(3), columns=SAFE_COLUMNS, size_limit=None)
    _shard_file(tmp_path).write_bytes(b"garbage")
    import pyarrow as pa

    dataset = etl.read_mds(str(tmp_path), on_bad_shard="quarantine")
    table = pa.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert table.schema == dataset.schema().base_schema
    assert table.num_rows == 3
    assert all(e.startswith("unreadable shard") for e in table.column("mds_error").to_pylist())
    assert all(table.column(name).null_count == 3 for name in SAFE_COLUMNS)
