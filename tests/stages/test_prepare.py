"""Prepare: ids, buckets, the read's verdict as `error`, and a sample's own timing checked."""

import pyarrow as pa

from etl.config import load_config
from etl.stages.prepare import Prepare
from etl.stages.rows import ERROR, FPS, FRAME_INDICES


def test_a_samples_own_timing_goes_to_the_captioner_and_a_lying_one_is_its_error():
    from etl.mds.encodings import get_encoding

    config = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out", "read.fps_column": "fps",
                                                     "read.frame_indices_column": "at"})
    frames = pa.array([[b"a", b"b"], [b"a"], [b"a", b"b"], [b"a", b"b"], [b"a"], [b"a", b"b"]],
                      pa.list_(pa.binary()))
    base = {"shard": pa.array([0] * 6, pa.int64()), "row": pa.array(range(6), pa.int64()),
            "mds_error": pa.nulls(6, pa.string()), "frames": frames,
            "fps": pa.array([30.0, None, 0.0, 25.0, 10.0, 30.0])}
    as_json = pa.array(["[0, 15]", None, "[0, 1]", "[3, 1]", "[0, 1]", "not json"])
    prepared = Prepare(config.read, "frames", 4)(pa.table({**base, "at": as_json}))
    assert prepared.column(FPS).to_pylist()[:2] == [30.0, None]
    assert prepared.column(FRAME_INDICES).to_pylist()[:2] == [[0, 15], None]
    assert prepared.column(ERROR).to_pylist() == [
        None, None, "read: timing: fps 0.0 is not positive", "read: timing: frame indices [3, 1] do not increase from 0 or more",
        "read: timing: 2 frame indices for 1 frames", "read: timing: frame indices 'not json' are not a list of integers"]
    # an MDS ndarray:int64 column (the reader's struct of shape and values) reads the same
    struct = get_encoding("ndarray:int64").arrow_type
    cells = [[0, 15], None, [0, 1], [3, 1], [0, 1], [0, 2]]
    as_ndarray = pa.array([None if c is None else {"shape": [len(c)], "values": c} for c in cells], struct)
    again = Prepare(config.read, "frames", 4)(pa.table({**base, "at": as_ndarray}))
    assert again.column(FRAME_INDICES).to_pylist() == cells
    assert again.column(ERROR).to_pylist()[3:] == [
        "read: timing: frame indices [3, 1] do not increase from 0 or more", "read: timing: 2 frame indices for 1 frames", None]
