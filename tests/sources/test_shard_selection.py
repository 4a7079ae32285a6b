import pytest

from etl.sources.shard_selection import group_shards, select_shards


def test_specs():
    assert select_shards(None, 4) == [0, 1, 2, 3]
    assert select_shards("1:3", 4) == [1, 2]
    assert select_shards("2:", 4) == [2, 3]
    assert select_shards(":2", 4) == [0, 1]
    assert select_shards("2:2", 4) == []
    assert select_shards([3, 0], 4) == [0, 3]


@pytest.mark.parametrize("spec, message", [
    ("3:1", "expected 'A:B' with 0 <= A <= B"), ("a:b", "expected 'A:B'"), ("5", "expected 'A:B'"),
    ("0:9", "the index has only 4 shards"), ([1, 1], "duplicate"), ([4], r"shards \[4\] do not exist"),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        select_shards(spec, 4)


def test_groups_are_bounded_by_count_and_bytes():
    assert group_shards([10] * 5, 2, None) == [[0, 1], [2, 3], [4]]
    assert group_shards([10, 10, 50, 10], 4, 25) == [[0, 1], [2], [3]]
    assert group_shards([100], 2, 25) == [[0]]  # a big shard still gets a task of its own
