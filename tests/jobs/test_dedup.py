"""The curation job with filters and a dedup pass after it, then `python -m jobs.dedup` again and
after a backfill: the counts add up (samples + quarantine == input, each rule's rejections are
the rows it marks), every injected copy is found, later passes compare only what changed, and
the duplicates table always describes live rows."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl import synthetic
from etl.config import load_config
from etl.mds import MDSWriter

ORIGINALS, EVERY = 30, 5  # 6 copies: exact, re-encoded, resized, in turn


def _table(output, name):
    from deltalake import DeltaTable

    return DeltaTable(f"{output}/{name}").to_pyarrow_table()


@pytest.fixture(scope="module")
def curated(tmp_path_factory, tiny, ray_local):
    from etl import pipeline

    # unrelated originals (no frame shared between samples), of 1-3 frames
    rows = [{"id": i, "caption": f"synthetic clip {i}", "frames": synthetic.jpeg_frames(1 + i % 3, 160, 120, seed=500 + i)}
            for i in range(ORIGINALS)]
    rows[9]["frames"][0] = b"not an image"
    rows = synthetic.with_duplicates(rows, every=EVERY, seed=1)
    path = tmp_path_factory.mktemp("input")
    with MDSWriter(str(path), columns={"id": "int", "caption": "str", "frames": "jpeg_array"},
                   size_limit=20_000) as writer:
        for row in rows:
            writer.write(row)
    output = tmp_path_factory.mktemp("curated")
    config = load_config("jobs/configs/local.yaml", {
        "input": str(path), "output": str(output), "read.text_column": "caption",
        "frames.min_pixels": 32 * 32, "frames.max_pixels": 64 * 64, "frames.crop_size": 64,
        "models.captioner.model": str(tiny["qwen3_vl"]), "models.captioner.max_new_tokens": 8,
        "models.captioner.backend": "transformers", "models.embedder.model": str(tiny["clip"]),
        "models.vae.model": str(tiny["vae"]), "models.build_tiny_if_missing": False, "sink.buckets": 4,
        "sink.rows_per_write": 8, "max_error_fraction": 0.5,
        "filters.scores": {"quality": {"min": 3}}, "filters.max_frames": 2, "filters.aspect_ratio": [1.0, 2.0],
        "dedup.after_run": True, "dedup.kinds": ["exact", "near"], "dedup.partitions": 4})
    summary = pipeline.run(config)
    return config, summary, rows


def test_samples_and_quarantine_add_up_and_each_rule_counts_what_it_marks(curated):
    config, summary, rows = curated
    samples = _table(config.output, "samples")
    assert samples.num_rows + _table(config.output, "quarantine").num_rows == len(rows)
    assert summary.rows["samples"] == samples.num_rows
    marks = samples.column("filtered_by").to_pylist()
    for rule in ("quality", "max_frames", "aspect_ratio"):
        assert summary.filters["rejected"][rule] == sum(rule in m for m in marks), rule
    assert summary.filters["filtered"] == sum(bool(m) for m in marks)
    assert summary.filters["rejected"]["max_frames"] == sum(n > 2 for n in samples.column("frame_count").to_pylist())
    assert summary.filters["rejected"]["aspect_ratio"] == 0  # every frame is 160 x 120 or a copy's resize
    report = (config.output + "/report.html")
    with open(report) as page:
        text = page.read()
    assert "pass rate" in text and "duplicates" in text


def _input_rows(config, rows) -> dict[str, dict]:
    """{sample_id: the input row it came from}: sample ids are "<shard>:<row>" in the MDS index."""
    index = json.load(open(f"{config.input}/index.json"))
    by_id, position = {}, 0
    for shard, entry in enumerate(index["shards"]):
        for row in range(entry["samples"]):
            by_id[f"{shard:06d}:{row:06d}"] = rows[position]
            position += 1
    return by_id


def test_every_copy_is_found_against_its_original(curated):
    config, summary, rows = curated
    duplicates = {r["sample_id"]: r for r in _table(config.output, "duplicates").to_pylist()}
    source = _input_rows(config, rows)
    committed = set(_table(config.output, "samples").column("sample_id").to_pylist())
    copies = {sid: source[sid]["caption"] for sid in committed if " copy of sample " in source[sid]["caption"]}
    assert len(copies) == ORIGINALS // EVERY and set(duplicates) == set(copies)
    for sid, caption in copies.items():
        kind, original = caption.split(" copy of sample ")
        assert source[duplicates[sid]["duplicate_of"]]["id"] == int(original), caption
        assert duplicates[sid]["kind"] == ("exact" if kind == "exact" else "near"), caption
    assert summary.dedup["duplicates"] == {"exact": 2, "near": 4}


def test_later_passes_compare_what_changed_and_keep_the_table_live(curated, tiny):
    from etl import pipeline
    from jobs import dedup

    config, first, rows = curated
    before = {r["sample_id"]: r["duplicate_of"] for r in _table(config.output, "duplicates").to_pylist()}
    summary_path = f"{config.output}/dedup-2.json"
    assert dedup.main(["--output", config.output, "--kinds", "exact,near", "--set", "dedup.partitions=4",
                       "--summary-json", summary_path]) == 0
    second = json.load(open(summary_path))
    assert (second["pass_number"], second["new"], second["judged"]) == (2, 0, len(before))
    assert {r["sample_id"]: r["duplicate_of"] for r in _table(config.output, "duplicates").to_pylist()} == before
    # a backfill of shard 0: its rows get a new run_id; the next pass counts them as re-processed
    backfill = pipeline.run(config.model_copy(update={
        "read": config.read.model_copy(update={"shards": "0:1"}),
        "dedup": config.dedup.model_copy(update={"after_run": False})}))
    assert backfill.mode == "replace"
    assert dedup.main(["--output", config.output, "--kinds", "exact,near", "--set", "dedup.partitions=4",
                       "--summary-json", summary_path]) == 0
    third = json.load(open(summary_path))
    assert third["reprocessed"] == backfill.rows["samples"] and third["new"] == 0
    live = {(r["sample_id"], r["run_id"]) for r in _table(config.output, "samples").to_pylist()}
    after = _table(config.output, "duplicates").to_pylist()
    assert all((r["sample_id"], r["sample_run_id"]) in live for r in after)
    assert {r["sample_id"] for r in after} | {r["duplicate_of"] for r in after} <= {s for s, _ in live}
    # one copy of each pair is kept: the same number of duplicates, whichever copy the ranks chose
    assert len(after) == len(before)


def test_training_reads_leave_out_filtered_rows_and_duplicates(curated):
    from etl.ingest import read_samples

    config, _, _ = curated
    samples = _table(config.output, "samples")
    duplicates = {(r["sample_id"], r["sample_run_id"]) for r in _table(config.output, "duplicates").to_pylist()}
    passing = samples.filter(pc.equal(pc.list_value_length(samples.column("filtered_by")), 0))
    expected = sorted(r["sample_id"] for r in passing.select(["sample_id", "run_id"]).to_pylist()
                      if (r["sample_id"], r["run_id"]) not in duplicates)
    got = sorted(r["sample_id"] for r in read_samples(config.output, columns=["sample_id"]).dataset.take_all())
    assert got == expected and len(got) < samples.num_rows
    everything = read_samples(config.output, columns=["sample_id"], apply_filters=False, drop_duplicates=False)
    assert everything.dataset.count() == samples.num_rows
    assert pa.types.is_list(samples.schema.field("filtered_by").type)
