import numpy as np
import pyarrow as pa
import pytest

from etl.mds.segments import binary_parts, concat_segments


@pytest.mark.parametrize("window", [1 << 31, 64, 7])
def test_concat_segments_matches_python_slicing(window):
    rng = np.random.default_rng(0)
    buffers = [pa.py_buffer(rng.bytes(1000)), pa.py_buffer(rng.bytes(300)), pa.py_buffer(b"")]
    which = rng.integers(0, 2, 500)
    lengths = rng.integers(0, 40, 500)
    starts = np.array([rng.integers(0, buffers[w].size - n + 1) for w, n in zip(which, lengths)])
    which[::50], starts[::50], lengths[::50] = 2, 0, 0  # empty buffer, empty values
    got = concat_segments(buffers, starts, lengths, which, window=window)
    raw = [b.to_pybytes() for b in buffers]
    assert got.type == pa.large_binary()
    assert got.to_pylist() == [raw[w][s:s + n] for w, s, n in zip(which, starts, lengths)]


def test_result_does_not_reference_the_input():
    source = bytearray(b"0123456789abcdefghij")
    got = concat_segments([pa.py_buffer(source)], [2, 5], [14, 3])
    source[:] = b"x" * len(source)
    assert got.to_pylist() == [b"23456789abcdef", b"567"]


def test_out_of_range_segments_are_refused():
    with pytest.raises(ValueError, match="outside its buffer"):
        concat_segments([pa.py_buffer(b"abc")], [2], [5])


def test_binary_parts_of_sliced_string_array():
    array = pa.array(["a", "bcd", "", "ef"], pa.string()).slice(1, 3)
    offsets, data = binary_parts(array)
    assert [data.to_pybytes()[a:b] for a, b in zip(offsets[:-1], offsets[1:])] == [b"bcd", b"", b"ef"]
