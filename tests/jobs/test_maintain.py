"""`python -m jobs.maintain` on an existing S3 output, as a user runs it: its own process, the
storage endpoint from the standard AWS variables, no Ray."""

import subprocess
import sys

from etl.sinks.delta_commits import open_table
from tests.samples_tables import BUCKETS, commit_samples, sample_rows


def _maintain(*args):
    job = subprocess.run([sys.executable, "-m", "jobs.maintain", *args], capture_output=True, text=True, timeout=300)
    return job.returncode, job.stdout, job.stderr


def test_maintain_compacts_then_vacuums_an_s3_output(bucket):
    output = f"{bucket}/curated"
    for shard in range(6):
        commit_samples(output, sample_rows(shard, 10))
    written = len(open_table(f"{output}/samples").file_uris())
    assert written > 3 * BUCKETS

    code, out, err = _maintain("--output", output)
    assert code == 0, err
    assert out.startswith(f"samples: {written} -> {BUCKETS} files, 0 vacuumed"), out
    assert "6 -> 0 entries past its checkpoint" in out, out

    code, out, err = _maintain("--output", output, "--retention-hours", "0")
    assert code == 0, err
    assert out.startswith(f"samples: {BUCKETS} -> {BUCKETS} files, {written} vacuumed"), out


def test_maintain_refuses_what_it_cannot_do_by_name(bucket):
    code, _, err = _maintain("--output", f"{bucket}/nothing-here")
    assert code == 1 and f"no Delta table under {bucket}/nothing-here" in err, err
    code, _, err = _maintain("--output", bucket, "--set", "sink.format=parquet")
    assert code == 2 and "maintenance is for Delta tables" in err, err
    code, _, err = _maintain("--output", bucket, "--target-file-mb", "0")
    assert code == 2 and "sink.maintenance.target_file_mb" in err, err
