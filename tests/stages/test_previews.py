"""The contact sheet's rows: spread over the run, bounded."""

from etl.stages.previews import PreviewRows, preview_rows


def test_previews_come_from_shards_spread_over_the_run_and_stay_bounded():
    many = preview_rows(list(range(100)), {s: 10 for s in range(100) if s != 33}, 24)
    assert len(many.shards) == 24 and many.rows == 1 and 33 not in many.shards
    assert many.shards[0] == 0 and many.shards[-1] == 99
    few = preview_rows([5, 6, 7], {5: 100, 6: 100, 7: 100}, 24)
    assert few == PreviewRows((5, 6, 7), 8)
    assert preview_rows([1], {1: 0}, 24) == PreviewRows()
