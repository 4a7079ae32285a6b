import json
import re

import pytest

from etl.mds import MDSError, parse_index
from etl.mds.index import check_basename


def _shard(**overrides):
    shard = {"column_encodings": ["int", "str"], "column_names": ["a", "b"], "column_sizes": [8, None],
             "compression": None, "format": "mds", "hashes": [], "samples": 2, "size_limit": 1000,
             "version": 2, "zip_data": None,
             "raw_data": {"basename": "shard.00000.mds", "bytes": 200, "hashes": {}}}
    shard.update(overrides)
    return shard


def _parse(*shards):
    return parse_index(json.dumps({"version": 2, "shards": list(shards)}).encode(), "idx/index.json")


def test_a_valid_index_parses_to_entries():
    entries = _parse(_shard(), _shard(raw_data={"basename": "sub/shard.00000.mds", "bytes": 300, "hashes": {"xxh64": "ab12"}}))
    assert [e.index for e in entries] == [0, 1]
    assert entries[1].raw_data.basename == "sub/shard.00000.mds"
    assert entries[0].encoding("a").fixed_size == 8


@pytest.mark.parametrize("overrides, message", [
    ({"format": "csv"}, "format 'csv' is not supported; only 'mds'"),
    ({"version": 1}, "shard version 1 is not supported"),
    ({"column_sizes": [8]}, "must be lists of one equal, non-zero length"),
    ({"column_names": ["a", "a"]}, "column names must be unique"),
    ({"compression": "zstd"}, "zip_data must be present exactly when compression is set"),
    ({"compression": "lzma"}, "unknown compression 'lzma'"),
    ({"samples": -1}, "'samples' must be a non-negative integer"),
    ({"samples": 100}, "raw_data is 200 bytes, too small to hold the header of 100 samples"),
    ({"raw_data": {"basename": "x.mds", "bytes": 200, "hashes": {"md5": "not hex!"}}}, "hex digests"),
])
def test_each_lie_in_a_shard_entry_is_named(overrides, message):
    with pytest.raises(MDSError, match=re.escape(message)) as info:
        _parse(_shard(**overrides))
    assert str(info.value).startswith("idx/index.json shard 0: ")


def test_two_shards_naming_one_file():
    with pytest.raises(MDSError, match=r"shards 0 and 1 both name file 'shard.00000.mds'"):
        _parse(_shard(), _shard())


def test_not_json():
    with pytest.raises(MDSError, match=r"idx/index.json: not valid JSON"):
        parse_index(b"{nope", "idx/index.json")


@pytest.mark.parametrize("ok", ["shard.00000.mds", "part-1/shard.00001.mds.zstd", "a/b/c.mds"])
def test_safe_basenames(ok):
    assert check_basename(ok, "x") == ok
