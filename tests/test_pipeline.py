"""End to end: a small MDS dataset with broken samples through the whole curation job."""

import concurrent.futures
import io
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.config import load_config
from etl.mds import MDSWriter
from etl.synthetic import jpeg_frames
from schemas.tables import quarantine_schema, restore, runs_schema, samples_schema, storage_schema

SHARDS = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("input")
    pool = jpeg_frames(6, 96, 64)
    broken = {4: "truncated", 13: "garbage"}
    with MDSWriter(str(path), columns={"id": "str", "text": "str", "frames": "jpeg_array"},
                   size_limit=9 * 4 * len(pool[0])) as writer:
        for i in range(24):
            frames = [pool[(i + k) % 6] for k in range(3 + i % 3)]
            if broken.get(i) == "truncated":
                frames[1] = frames[1][:300]
            if broken.get(i) == "garbage":
                frames[0] = b"not an image"
            writer.write({"id": f"clip-{i}", "text": f"clip number {i}", "frames": frames})
    index = json.loads((path / "index.json").read_text())
    assert len(index["shards"]) == SHARDS, [s["samples"] for s in index["shards"]]
    return path, {i: s["samples"] for i, s in enumerate(index["shards"])}, broken


def _config(dataset_path, output, tiny, **extra):
    return load_config("jobs/configs/local.yaml", {
        "input": str(dataset_path), "output": str(output), "read.id_column": "id", "read.text_column": "text",
        "frames.min_pixels": 32 * 32, "frames.max_pixels": 64 * 64, "frames.crop_size": 64,
        "models.captioner.model": str(tiny["qwen3_vl"]), "models.captioner.max_new_tokens": 8,
        "models.captioner.backend": "transformers",  # fast; tests/test_pipeline_vllm.py runs vLLM
        "models.embedder.model": str(tiny["clip"]), "models.embedder.batch_size": 4, "models.vae.model": str(tiny["vae"]),
        "models.build_tiny_if_missing": False, "sink.buckets": 4, "sink.rows_per_write": 4,
        "sink.commit_every_files": 4, **extra})  # the test's own settings win


@pytest.fixture(scope="module")
def two_runs(dataset, tiny, tmp_path_factory, ray_local):
    from etl import pipeline

    path, _, _ = dataset
    outputs = [tmp_path_factory.mktemp(f"out{i}") for i in range(2)]
    # the second run writes hive-partitioned Parquet: same rows, no Delta log
    summaries = [pipeline.run(_config(path, out, tiny, **{"sink.format": fmt}))
                 for out, fmt in zip(outputs, ("delta", "parquet"))]
    return outputs, summaries


def _table(output, name):
    from deltalake import DeltaTable

    if not (output / name / "_delta_log").is_dir():
        return _parquet_table(output, name)
    return DeltaTable(str(output / name)).to_pyarrow_table()


def _parquet_table(output, name):
    import pyarrow.dataset as ds

    partitioning = None if name == "runs" else ds.partitioning(pa.schema([("bucket", pa.int32())]), flavor="hive")
    return ds.dataset(str(output / name), format="parquet", partitioning=partitioning).to_table()


def test_every_input_sample_is_in_samples_or_quarantine_per_shard(dataset, two_runs):
    _, per_shard_input, broken = dataset
    (output, _), (summary, _) = two_runs
    samples, quarantine, runs = (_table(output, n) for n in ("samples", "quarantine", "runs"))
    for shard, count in per_shard_input.items():
        got = pa.compute.sum(pa.compute.equal(samples.column("shard"), shard)).as_py() or 0
        bad = pa.compute.sum(pa.compute.equal(quarantine.column("shard"), shard)).as_py() or 0
        assert got + bad == count, (shard, got, bad, count)
    ledger = {r["shard"]: (r["samples"], r["quarantined"]) for r in runs.to_pylist()}
    assert {s: a + b for s, (a, b) in ledger.items()} == per_shard_input
    assert len(set(samples.column("sample_id").to_pylist())) == samples.num_rows == 24 - len(broken)
    assert summary.commits["samples"] >= 2  # commits as files arrive, not once at the end
    assert 0 < summary.first_commit_seconds < summary.seconds and summary.last_read_seconds > 0
    assert summary.files["samples"] <= summary.commits["samples"] * 4 + 3


def test_the_plan_has_no_barrier_between_read_and_write(two_runs):
    _, (summary, _) = two_runs
    operators = [line.split(":")[0] for line in summary.stage_stats.splitlines() if line.startswith("Operator ")]
    assert operators and not [op for op in operators if any(
        word in op for word in ("Repartition", "Sort", "Shuffle", "Aggregate", "Zip", "Union"))], operators


def test_broken_samples_land_in_quarantine_with_their_reason(dataset, two_runs):
    _, _, broken = dataset
    (output, _), (summary, _) = two_runs
    rows = {r["sample_id"]: r for r in _table(output, "quarantine").to_pylist()}
    assert set(rows) == {f"clip-{i}" for i in broken}
    # garbage bytes have no image header: the read stage's bomb/header check catches them first
    assert rows["clip-13"]["stage"] == "read"
    assert rows["clip-13"]["error"] == "read: column 'frames': no readable PNG or JPEG header"
    # a JPEG cut inside its header has one, but Pillow cannot open it
    assert rows["clip-4"]["stage"] == "decode"
    assert rows["clip-4"]["error"] == "decode: frame 1: not a decodable image (OSError: Truncated File Read)"
    assert summary.reasons == {"read: no readable PNG or JPEG header": 1, "decode: not a decodable image": 1}


def test_tables_match_the_versioned_schemas(two_runs):
    (output, _), _ = two_runs
    expected = {"samples": samples_schema(16, (4, 8, 8)), "quarantine": quarantine_schema(), "runs": runs_schema()}
    for name in ("samples", "quarantine"):
        files = sorted((output / name).rglob("*.parquet"))
        assert files
        stored = storage_schema(expected[name])
        assert pq.read_schema(files[0]).remove_metadata() == stored.remove(stored.get_field_index("bucket")).remove_metadata()
        logical = restore(_table(output, name), expected[name])
        assert logical.schema.names == expected[name].names
    assert _table(output, "runs").schema.names == expected["runs"].names


def test_captions_scores_embeddings_and_latents(two_runs):
    (output, _), _ = two_runs
    table = restore(_table(output, "samples"), samples_schema(16, (4, 8, 8)))
    embeddings = table.column("embedding").combine_chunks().to_numpy_ndarray()
    assert embeddings.shape == (table.num_rows, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)
    latents = table.column("latents").combine_chunks().flatten().to_numpy_ndarray()
    assert latents.shape == (sum(table.column("frame_count").to_pylist()), 4, 8, 8)
    for row in table.select(["caption", "quality", "aesthetics", "caption_parse_error", "frame_count",
                             "frame_sizes", "frame_embeddings"]).to_pylist():
        assert isinstance(row["caption"], str)
        for score in ("quality", "aesthetics"):
            assert isinstance(row[score], float) or (row[score] is None and row["caption_parse_error"])
        assert len(row["frame_embeddings"]) == row["frame_count"] == len(row["frame_sizes"])
        assert row["frame_sizes"][0] == [96, 64]


def test_two_runs_with_the_same_seed_give_the_same_captions(two_runs):
    (first, second), summaries = two_runs
    captions = [{r["sample_id"]: r["caption"] for r in _table(out, "samples").to_pylist()} for out in (first, second)]
    assert captions[0] == captions[1] and len(captions[0]) == 22
    assert summaries[0].run_id != summaries[1].run_id


def test_parquet_format_writes_hive_partitioned_tables_of_the_same_rows(dataset, two_runs):
    (delta_out, parquet_out), (_, summary) = two_runs
    assert not (parquet_out / "samples" / "_delta_log").exists()
    assert {p.name for p in (parquet_out / "samples").iterdir()} <= {f"bucket={b}" for b in range(4)}
    for name in ("samples", "quarantine"):
        expected = restore(_table(delta_out, name), samples_schema(16, (4, 8, 8)) if name == "samples"
                           else quarantine_schema())
        got = _parquet_table(parquet_out, name)
        assert got.num_rows == expected.num_rows == summary.rows[name]
        by_id = lambda t: {r["sample_id"]: (r["shard"], r["row"], r["bucket"]) for r in
                           t.select(["sample_id", "shard", "row", "bucket"]).to_pylist()}
        assert by_id(got) == by_id(expected)
    runs = _parquet_table(parquet_out, "runs")
    assert runs.schema.names == runs_schema().names
    assert sum(runs.column("samples").to_pylist()) + sum(runs.column("quarantined").to_pylist()) == 24


def test_embeddings_and_latents_reach_torch_as_tensors(two_runs):
    import ray.data
    import torch
    from deltalake import DeltaTable

    (output, _), _ = two_runs
    schema = samples_schema(16, (4, 8, 8))
    files = DeltaTable(str(output / "samples")).file_uris()  # the committed snapshot
    stored = ray.data.read_parquet(files, columns=["sample_id", "embedding", "latents"])
    logical = stored.map_batches(lambda t: restore(t, schema), batch_format="pyarrow")
    batch = next(iter(logical.select_columns(["embedding"]).iter_torch_batches(batch_size=8)))
    assert batch["embedding"].dtype == torch.float32 and batch["embedding"].shape == (8, 16)

    def one_row_per_frame(table):  # Arrow-level flatten, no per-row Python
        latents = table.column("latents").combine_chunks()
        return pa.table({"latent": latents.flatten()})

    frames = logical.map_batches(one_row_per_frame, batch_format="pyarrow")
    latent_batch = next(iter(frames.iter_torch_batches(batch_size=16)))
    assert latent_batch["latent"].shape == (16, 4, 8, 8)


def test_the_run_asks_ray_for_what_the_planner_placed_on_this_cluster(two_runs):
    _, summaries = two_runs
    plan = summaries[0].plan
    # the session cluster: one node, 2 CPUs, no GPU -> one CPU captioner, one encoder, one decode actor
    assert "captioner (transformers): 1 x [0.4 CPU, 0 GPU" in plan
    assert "encoders: 1 x [0.4 CPU, 0 GPU" in plan and "decode: 1 x [0.7 CPU" in plan
    # read and prepare ask for the same resources, so Ray fuses them into one task (no extra hop)
    assert "ReadMDS->MapBatches(Prepare)" in summaries[0].stage_stats


def test_a_config_that_does_not_fit_the_cluster_is_refused_before_any_work(dataset, tiny, tmp_path, ray_local):
    from etl import pipeline
    from etl.planner import PlanError

    path, _, _ = dataset
    config = _config(path, tmp_path / "out", tiny, **{"resources.decode.actors": 4})
    with pytest.raises(PlanError, match=r"resources.decode.actors=4 .* set resources.decode.actors <= 1"):
        pipeline.run(config)
    assert not (tmp_path / "out").exists()


def test_each_run_writes_its_report_next_to_its_tables(dataset, two_runs):
    _, _, broken = dataset
    outputs, summaries = two_runs
    for output, summary in zip(outputs, summaries):
        assert summary.report == str(output / "report.html")
        page = (output / "report.html").read_text()
        assert page == (output / "reports" / f"{summary.run_id}.html").read_text()
        assert f"Curation run {summary.run_id}" in page and "decode: not a decodable image" in page
        # every row passed every stage once, in the per-second counts the plot is drawn from
        assert {stage: sum(s.values()) for stage, s in summary.timeline.items()} == {
            stage: 24 for stage in ("read", "decode", "caption", "encode", "write")}
        # the contact sheet: committed samples only, from shards spread over the run
        assert summary.previews and not {p["sample_id"] for p in summary.previews} & {f"clip-{i}" for i in broken}
        assert page.count('<div class="card">') == len(summary.previews) <= 24
        assert {p["shard"] for p in summary.previews} == set(range(SHARDS))  # every shard, not the first only


def test_rows_commit_while_the_read_is_still_running(tiny, tmp_path, s3_server, ray_local):
    """Once the actor pools fill the cluster, Ray Data gave a *task* stage after them no CPU until
    the read had finished, so a 1M-sample run committed nothing before its end. Here the last
    shard's GET is held until a commit lands: a run that cannot commit during its read would wait
    out the hold (and fail this test), one that can finishes with that shard read after a commit."""
    import yaml

    from tests.s3_server import GatedProxy
    from tests.curate_process import curate, finish

    local = tmp_path / "input"
    pool = jpeg_frames(4, 96, 64)
    with MDSWriter(str(local), columns={"id": "str", "text": "str", "frames": "jpeg_array"},
                   size_limit=8 * (len(pool[0]) + 100)) as writer:
        for i in range(160):
            writer.write({"id": f"clip-{i}", "text": f"clip {i}", "frames": [pool[i % 4]]})
    shards = json.loads((local / "index.json").read_text())["shards"]
    source = s3_server.create_bucket("commit-overlap-" + os.urandom(3).hex()) + "/mds"
    s3_server.put_tree(local, source)
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(_config(source, tmp_path / "out", tiny, **{
        "read.shards_per_task": 1, "frames.max_pixels": 448 * 448,  # 10-sample decode batches: none waits for the held shard
    }).model_dump(mode="json")))
    samples_log = tmp_path / "out" / "samples" / "_delta_log"
    committed = lambda: any('"add"' in f.read_text() for f in samples_log.glob("*.json"))  # rows, not a bare table
    hold_s = 300
    with GatedProxy(s3_server.endpoint, "/" + shards[-1]["raw_data"]["basename"], max_hold_s=hold_s) as proxy:
        job = curate(config_file, source, str(tmp_path / "out"), "--summary-json", str(tmp_path / "summary.json"),
                     env={"AWS_ENDPOINT_URL": proxy.endpoint}, ray_address=ray_local.get_runtime_context().gcs_address)
        deadline = time.monotonic() + hold_s
        while job.poll() is None and time.monotonic() < deadline and not committed():
            time.sleep(0.2)
        committed_during_hold = committed()
        proxy.gate.set()
        finish(job)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert proxy.held >= 1  # the last shard's read did go through the gate
    assert committed_during_hold, summary
    assert summary["rows"].get("samples", 0) + summary["rows"].get("quarantine", 0) == 160, summary["rows"]
    assert summary["shards_read_after_first_commit"] >= 1, summary


def _die(batch):
    import os

    os._exit(1)  # a worker that dies on this batch every time (a segfault, an OOM kill)


class _DyingActor:
    def __call__(self, batch):
        _die(batch)


@pytest.mark.parametrize("stage", ["task", "actor"])
def test_a_batch_that_kills_its_worker_every_time_fails_the_job_instead_of_looping(stage, ray_local, tiny, tmp_path):
    import ray.data
    from ray.data import ActorPoolStrategy

    from etl.pipeline import retry_bounds

    config = _config(tmp_path, tmp_path / "out", tiny, **{"ray.max_task_retries": 1})
    task_retries, actor_retries = retry_bounds(config)
    dataset = ray.data.range(4, override_num_blocks=1)
    if stage == "task":
        dataset = dataset.map_batches(_die, num_cpus=0.1, **task_retries)
    else:
        dataset = dataset.map_batches(_DyingActor, num_cpus=0.1, compute=ActorPoolStrategy(size=1), **actor_retries)
    # unbounded retries would never return: wait in a thread, so that failure is a failed test
    pool = concurrent.futures.ThreadPoolExecutor(1)
    running = pool.submit(dataset.take_all)
    pool.shutdown(wait=False)
    with pytest.raises(Exception, match="(?i)died|crash|exit|unexpected|unavailable"):
        running.result(timeout=120)


def test_previews_come_from_shards_spread_over_the_run_and_stay_bounded():
    from etl.pipeline import PreviewRows, preview_rows

    many = preview_rows(list(range(100)), {s: 10 for s in range(100) if s != 33}, 24)
    assert len(many.shards) == 24 and many.rows == 1 and 33 not in many.shards
    assert many.shards[0] == 0 and many.shards[-1] == 99
    few = preview_rows([5, 6, 7], {5: 100, 6: 100, 7: 100}, 24)
    assert few == PreviewRows((5, 6, 7), 8)
    assert preview_rows([1], {1: 0}, 24) == PreviewRows()


def test_the_decode_stage_previews_exactly_the_chosen_good_rows():
    from PIL import Image

    from etl.pipeline import ERROR, FRAMES, PREVIEW, DecodeStage, PreviewRows
    from etl.transforms.frames import FrameSpec

    frame = jpeg_frames(1, 96, 64)[0]
    rows = [(0, 0, None), (0, 1, None), (0, 2, None), (1, 0, None), (2, 0, None), (2, 1, "read: bad")]
    batch = pa.table({"shard": pa.array([r[0] for r in rows], pa.int64()), "row": pa.array([r[1] for r in rows], pa.int64()),
                      ERROR: pa.array([r[2] for r in rows], pa.string()), FRAMES: [[frame]] * len(rows)})
    out = DecodeStage(FRAMES, FrameSpec(min_pixels=32 * 32, max_pixels=64 * 64, crop_size=32), ERROR,
                      PreviewRows((0, 2), 2))(batch)
    previews = out.column(PREVIEW).to_pylist()
    assert [p is not None for p in previews] == [True, True, False, False, True, False]
    assert max(Image.open(io.BytesIO(previews[0])).size) <= 160


def test_the_encode_stage_encodes_each_frames_crop_and_drops_the_views(tiny, tmp_path):
    import torch

    from etl.models.encoders import FrameEncoders, centre_crops
    from etl.pipeline import ERROR, EncodeStage
    from etl.transforms.frames import CAPTION_VIEW_TYPE

    rng = np.random.default_rng(0)
    cell = lambda h, w: {"height": h, "width": w, "pixels": rng.integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()}
    shapes = [[(64, 96), (64, 96)], [], [(96, 64)], [(64, 64), (32, 96), (96, 64)]]
    views = [[cell(h, w) for h, w in row] for row in shapes]
    crops = [[None] * len(row) for row in shapes]
    crops[3][1] = cell(64, 64)  # a view too small for the crop: the CPU stage sent the crop itself
    batch = pa.table({"sample_id": [f"0:{i}" for i in range(4)], ERROR: [None, "decode: bad", None, None],
                      "caption_frames": pa.array(views, pa.list_(CAPTION_VIEW_TYPE)),
                      "crop_frames": pa.array(crops, pa.list_(CAPTION_VIEW_TYPE))})
    out = EncodeStage(_config(tmp_path, tmp_path / "out", tiny))(batch.slice(1))
    assert "caption_frames" not in out.column_names and "crop_frames" not in out.column_names
    sent = [crop or view for view_row, crop_row in zip(views[1:], crops[1:]) for view, crop in zip(view_row, crop_row)]
    frames = [torch.from_numpy(np.frombuffer(c["pixels"], np.uint8).reshape(c["height"], c["width"], 3).copy())
              for c in sent]
    expected = FrameEncoders(str(tiny["clip"]), str(tiny["vae"]))(centre_crops(frames, 64).permute(0, 2, 3, 1).numpy())
    got = out.column("frame_embeddings").combine_chunks()
    assert got.value_lengths().to_pylist() == [0, 1, 3]
    np.testing.assert_allclose(got.flatten().to_numpy_ndarray(), expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.column("latents").combine_chunks().flatten().to_numpy_ndarray(), expected[1],
                               rtol=1e-4, atol=1e-5)


def test_the_cpu_stage_makes_the_crops_when_the_encoders_get_no_gpu(tiny, tmp_path):
    from etl.pipeline import frame_spec

    config = _config(tmp_path, tmp_path / "out", tiny, **{"frames.max_pixels": 128 * 128})
    on_gpu, on_cpu = frame_spec(config, encoders_on_gpu=True), frame_spec(config, encoders_on_gpu=False)
    view = on_gpu.caption_size(1280, 720)
    assert min(view) >= 64  # large enough to cut the 64 px crop from
    assert not on_gpu.crop_made_here(view) and on_cpu.crop_made_here(view)
    assert on_gpu.crop_made_here((32, 32))  # too small: made here wherever the encoders run


def test_a_vllm_caption_actor_takes_two_batches_at_once_and_transformers_one():
    from etl.pipeline import caption_batches_per_actor

    vllm = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out"})
    assert vllm.models.captioner.backend == "vllm"
    assert caption_batches_per_actor(vllm) == {"max_concurrent_calls_per_actor": 2, "enable_true_multi_threading": True}
    hf = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out", "models.captioner.backend": "transformers"})
    assert caption_batches_per_actor(hf) == {}


def test_a_samples_own_timing_goes_to_the_captioner_and_a_lying_one_is_its_error():
    from etl.mds.encodings import get_encoding
    from etl.pipeline import ERROR, FPS, FRAME_INDICES, Prepare

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


def test_the_job_reads_the_columns_it_names_and_refuses_one_the_input_lacks():
    from etl.pipeline import read_columns

    encodings = {"frames": "jpeg_array", "text": "str", "fps": "float64"}
    read = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out", "read.text_column": "text",
                                                   "read.fps_column": "fps"}).read
    assert read_columns(read, encodings, "frames") == ["frames", "text", "fps"]
    lacking = read.model_copy(update={"frame_indices_column": "at"})
    with pytest.raises(ValueError, match=r"read.frame_indices_column='at': no such column in the input "
                                         r"\(its columns: frames, text, fps\)"):
        read_columns(lacking, encodings, "frames")
