import json

import numpy as np
import pyarrow as pa
import pytest

from etl import storage
from etl.mds import MDSWriter, ShardReader, load_index
from etl.mds.encodings import EncodingError
from tests.mds_cases import jpeg_bytes, write_reference

# Encodings with a columnar encode path, and the Arrow type each is given in.
COLUMNAR = {
    "b": ("bytes", pa.large_binary()), "s": ("str", pa.string()), "i": ("int", pa.int64()),
    "u16": ("uint16", pa.uint16()), "f32": ("float32", pa.float32()), "si": ("str_int", pa.int64()),
    "j": ("json", pa.string()), "frames": ("jpeg_array", pa.list_(pa.binary())),
    "lj": ("list[jpeg]", pa.large_list(pa.large_binary())),
    "t": ("ndarray:float32:2,2", pa.list_(pa.list_(pa.float32()))),
}


def _rows(count):
    rng = np.random.default_rng(0)
    return [{"b": rng.bytes(i % 7), "s": f"row {i} é", "i": i * 1000 - 7, "u16": i, "f32": float(np.float32(i / 3)),
             "si": -i * 10**12, "j": json.dumps({"i": i}), "frames": [jpeg_bytes(rng) for _ in range(1 + i % 4)],
             "lj": [jpeg_bytes(rng)] * (i % 3), "t": [[i, 1.5], [2.0, -i]]} for i in range(30)]


def _columns():
    return {name: encoding for name, (encoding, _) in COLUMNAR.items()}


def _write_both_ways(tmp_path, rows, columns, name):
    table = pa.table({c: pa.array([r[c] for r in rows], COLUMNAR[c][1]) for c in columns})
    with MDSWriter(str(tmp_path / f"{name}-columnar"), columns=columns, size_limit=9000) as writer:
        writer.write_table(table.slice(0, 11))
        writer.write_table(table.slice(11))
    return json.loads((tmp_path / f"{name}-columnar" / "index.json").read_text())


def _same_files(index, left, right):
    for shard in index["shards"]:
        name = shard["raw_data"]["basename"]
        assert (left / name).read_bytes() == (right / name).read_bytes(), name


def test_columnar_path_writes_the_same_shards_as_per_sample_paths(tmp_path):
    rows = _rows(30)
    as_python = [dict(r, t=np.array(r["t"], np.float32), j=json.loads(r["j"])) for r in rows]
    columns = _columns()
    index = _write_both_ways(tmp_path, rows, columns, "all")
    assert len(index["shards"]) > 2
    with MDSWriter(str(tmp_path / "all-per-sample"), columns=columns, size_limit=9000) as writer:
        for row in as_python:
            writer.write(row)
    assert json.loads((tmp_path / "all-per-sample" / "index.json").read_text()) == index
    _same_files(index, tmp_path / "all-columnar", tmp_path / "all-per-sample")

    # The reference writer refuses bytes inside list[jpeg] (it re-encodes PIL images), so it
    # checks every other columnar encoding.
    subset = {c: e for c, e in columns.items() if c != "lj"}
    index = _write_both_ways(tmp_path, rows, subset, "subset")
    write_reference(tmp_path / "reference", as_python, columns=subset, size_limit=9000)
    assert json.loads((tmp_path / "reference" / "index.json").read_text()) == index
    _same_files(index, tmp_path / "subset-columnar", tmp_path / "reference")


def test_str_float_round_trips_exactly(tmp_path):
    values = [0.1, -1e300, 1e-300, float("inf"), 123456789.125, 2.0**-1074]
    with MDSWriter(str(tmp_path), columns={"x": "str_float"}) as writer:
        writer.write_table(pa.table({"x": pa.array(values)}))
    fs, root = storage.resolve(str(tmp_path))
    (entry,) = load_index(fs, root)
    assert ShardReader(fs, root).read(entry, ["x"]).column("x").to_pylist() == values


def test_nulls_missing_columns_and_wrong_shapes_are_refused(tmp_path):
    writer = MDSWriter(str(tmp_path), columns={"x": "int", "t": "ndarray:uint8:3"})
    with pytest.raises(EncodingError, match=r"column 'x' has 1 null value\(s\)"):
        writer.write_table(pa.table({"x": [1, None], "t": [[1, 2, 3]] * 2}))
    with pytest.raises(ValueError, match=r"input lacks column\(s\) \['t'\]"):
        writer.write_table(pa.table({"x": [1]}))
    with pytest.raises(EncodingError, match=r"column 't' \(ndarray:uint8:3, Arrow list<item: int64>\): row 1 holds 2 values, the fixed shape needs 3"):
        writer.write_table(pa.table({"x": [1, 2], "t": [[1, 2, 3], [1, 2]]}))


def test_no_index_when_the_block_fails_and_no_overwrite(tmp_path):
    with pytest.raises(RuntimeError):
        with MDSWriter(str(tmp_path), columns={"x": "int"}, size_limit=100) as writer:
            writer.write_table(pa.table({"x": list(range(100))}))
            raise RuntimeError("producer died")
    assert any(p.name.startswith("shard.") for p in tmp_path.iterdir())
    assert not (tmp_path / "index.json").exists()
    with MDSWriter(str(tmp_path), columns={"x": "int"}) as writer:
        writer.write({"x": 1})
    with pytest.raises(FileExistsError, match="already holds an index.json"):
        MDSWriter(str(tmp_path), columns={"x": "int"})


def test_config_is_validated_with_allowed_values(tmp_path):
    with pytest.raises(ValueError, match=r"unknown encoding 'jpg'; allowed: \["):
        MDSWriter(str(tmp_path), columns={"x": "jpg"})
    with pytest.raises(ValueError, match=r"unknown hash algorithm\(s\) \['crc'\]"):
        MDSWriter(str(tmp_path), columns={"x": "int"}, hashes=["crc"])
    with pytest.raises(ValueError, match=r"size_limit must be between 1 and 2\*\*32 - 1"):
        MDSWriter(str(tmp_path), columns={"x": "int"}, size_limit=1 << 32)
    assert MDSWriter(str(tmp_path), columns={"x": "int"}, size_limit="64mb").size_limit == 64 << 20
