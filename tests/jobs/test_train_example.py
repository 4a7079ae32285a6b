import math

import pytest

from jobs import train_example
from tests.samples_tables import commit_samples, quality_of, sample_rows

ROWS = 30


def test_two_workers_train_on_equal_shares_of_the_pinned_version(tmp_path, ray_local, capsys):
    output = str(tmp_path / "curated")
    commit_samples(output, sample_rows(0, ROWS))
    commit_samples(output, sample_rows(1, 10))  # version 1: pinning version 0 must not see it
    scored = sum(quality_of(r) is not None for r in range(ROWS))
    assert scored % 2 == 1  # odd on purpose: the equal split leaves one row out
    share, batch = scored // 2, 4
    steps_per_epoch = math.ceil(share / batch)

    # one full epoch, then --steps stops the second one after a single step on both workers
    summary = train_example.run(train_example.parse_args([
        "--output", output, "--version", "0", "--batch-size", str(batch), "--epochs", "3",
        "--steps", str(steps_per_epoch + 1), "--storage-path", str(tmp_path / "train")]))

    assert summary["version"] == 0 and summary["steps"] == steps_per_epoch + 1
    first, second = summary["epochs"]
    assert first["rows_per_worker"] == [share, share]  # both workers; every scored row of version 0 but one
    assert second["rows_per_worker"] == [batch, batch]  # the second epoch re-read the same snapshot
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in summary["epochs"])
    assert summary["checkpoint"].startswith(str(tmp_path / "train"))
    assert "model.pt" in {p.name for p in (tmp_path / "train").rglob("*")}
    assert "at Delta version 0 (latest 1)" in capsys.readouterr().out


def test_main_reports_a_missing_table_without_training(tmp_path, ray_local, capsys):
    assert train_example.main(["--output", str(tmp_path)]) == 2
    assert f"cannot train: no Delta table at {tmp_path}/samples" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--steps", "--workers", "--batch-size", "--epochs"])
def test_counts_must_be_positive(flag, capsys):
    with pytest.raises(SystemExit) as refused:
        train_example.parse_args(["--output", "x", flag, "0"])
    assert refused.value.code == 2  # argparse's usage error, not a crash
    assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err
    assert getattr(train_example.parse_args(["--output", "x", flag, "1"]), flag[2:].replace("-", "_")) == 1
