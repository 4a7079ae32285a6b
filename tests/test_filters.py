"""The config's filters: each rule marks the rows that fail it, on its own; nulls as documented;
the names in `filtered_by` keep the config's order."""

import numpy as np
import pyarrow as pa

from etl.config import FiltersConfig
from etl.filters import columns_read, failures, filtered_by


def _rows():
    return pa.table({
        "quality": pa.array([5, 1, None, 3, 4], pa.float32()),
        "clip_score_caption": pa.array([0.3, 0.1, 0.25, -0.2, 0.9], pa.float32()),
        "clip_score_text": pa.array([None, 0.0, 0.5, 0.2, 0.3], pa.float32()),
        "frame_count": pa.array([1, 2, 1, 12, 1], pa.int32()),
        "frame_sizes": [[[320, 180]], [[64, 64], [40, 300]], [[1000, 100]], [[320, 180]] * 12, [[33, 64]]],
    })


def test_each_rule_marks_the_rows_that_fail_it():
    rules = FiltersConfig(scores={"quality": {"min": 3}, "clip_score_caption": {"min": 0.0, "max": 0.5},
                                  "clip_score_text": {"min": 0.1}},
                          min_side=50, aspect_ratio=(0.5, 2.0), max_frames=10)
    failed = failures(_rows(), rules)
    assert list(failed) == ["quality", "clip_score_caption", "clip_score_text", "min_side", "aspect_ratio",
                            "max_frames"]
    expected = {
        "quality": [False, True, True, False, False],            # a null score fails its bound
        "clip_score_caption": [False, False, False, True, True],
        "clip_score_text": [False, True, False, False, False],   # null: no text, nothing to hold to a bound
        "min_side": [False, True, False, False, True],           # 40 px, 33 px
        "aspect_ratio": [False, True, True, False, False],       # 40/300, 1000/100
        "max_frames": [False, False, False, True, False],
    }
    assert {name: mask.tolist() for name, mask in failed.items()} == expected
    marks = filtered_by(failed, 5).to_pylist()
    assert marks[0] == [] and marks[1] == ["quality", "clip_score_text", "min_side", "aspect_ratio"]
    assert marks[3] == ["clip_score_caption", "max_frames"]
    assert set(columns_read(rules)) == {"quality", "clip_score_caption", "clip_score_text", "frame_sizes",
                                        "frame_count"}


def test_no_rules_mark_nothing():
    failed = failures(_rows(), FiltersConfig())
    assert failed == {} and filtered_by(failed, 5).to_pylist() == [[]] * 5
    assert FiltersConfig(scores={"quality": {}}).rules() == {}  # a bound with neither end is no rule
    assert failures(_rows(), FiltersConfig(scores={"quality": {}})) == {}


def test_a_bound_needs_its_ends_in_order():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exceeds"):
        FiltersConfig(scores={"quality": {"min": 4, "max": 2}})
    with pytest.raises(ValidationError, match="aspect_ratio"):
        FiltersConfig(aspect_ratio=(2.0, 1.0))
    assert np.isfinite(FiltersConfig(aspect_ratio=(0.1, 10)).aspect_ratio).all()
