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

SAMPLES = samples_schema(16, (4, 8, 8), text_states=(77, 32))  # the tiny CLIP, with local.yaml's text states

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
    expected = {"samples": SAMPLES, "quarantine": quarantine_schema(), "runs": runs_schema()}
    for name in ("samples", "quarantine"):
        files = sorted(path for path in (output / name).rglob("*.parquet") if "_delta_log" not in path.parts)
        assert files  # the run's own files, and the compacted ones: Delta's log checkpoints are not data
        stored = storage_schema(expected[name])
        assert pq.read_schema(files[0]).remove_metadata() == stored.remove(stored.get_field_index("bucket")).remove_metadata()
        logical = restore(_table(output, name), expected[name])
        assert logical.schema.names == expected[name].names
    assert _table(output, "runs").schema.names == expected["runs"].names


def test_captions_scores_embeddings_and_latents(two_runs):
    (output, _), _ = two_runs
    table = restore(_table(output, "samples"), SAMPLES)
    embeddings = table.column("embedding").combine_chunks().to_numpy_ndarray()
    assert embeddings.shape == (table.num_rows, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)
    latents = table.column("latents").combine_chunks().flatten().to_numpy_ndarray()
    assert latents.shape == (sum(table.column("frame_count").to_pylist()), 4, 8, 8)
    for row in table.select(["caption", "quality", "aesthetics", "caption_parse_error", "frame_count",
                             "frame_sizes", "frame_embeddings"]).to_pylist():
        assert isinstance(row["caption"], str)
        # a parsed answer has both scores in the schema's range; a missing score has its reason
        # (the transformers backend with random weights and 8 new tokens never parses;
        # tests/test_pipeline_vllm.py asserts that with vLLM every score is there)
        error = row["caption_parse_error"]
        whole_answer = ("no JSON object in the answer", "invalid JSON", "answer is not a JSON object")
        for score in ("quality", "aesthetics"):
            if error is None:
                assert 1 <= row[score] <= 5, row
            elif row[score] is None:
                assert error.startswith(whole_answer) or f"{score} " in error, row
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
        expected = restore(_table(delta_out, name), SAMPLES if name == "samples"
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
    schema = SAMPLES
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


def test_the_summary_says_where_each_stage_ran_and_that_the_cluster_held(two_runs):
    import ray

    from etl.cluster_watch import placement_by_node

    _, summaries = two_runs
    for summary in summaries:
        by_node = placement_by_node(summary.placement)
        here = ray.get_runtime_context().get_node_id()
        assert {stage: set(nodes) for stage, nodes in by_node.items()} == {
            stage: {here} for stage in ("read", "decode", "caption", "encode", "write")}
        assert {stage: nodes[here]["rows"] for stage, nodes in by_node.items()} == {
            stage: 24 for stage in ("read", "decode", "caption", "encode", "write")}
        # one actor per pool (the plan's), and the read's tasks, each counted once
        assert {stage: by_node[stage][here]["workers"] for stage in ("decode", "caption", "encode", "write")} == {
            "decode": 1, "caption": 1, "encode": 1, "write": 1}
        assert 1 <= by_node["read"][here]["workers"] <= SHARDS
        # the session's Ray runs no dashboard: no State API to list retries, and the run says so
        assert summary.cluster == {"lost_nodes": [], "joined_nodes": [], "retried_tasks": [], "restarted_actors": [],
                                   "unknown": "Ray's State API did not answer (LookupError: this Ray cluster runs no "
                                              "dashboard)"}, summary.cluster


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


@pytest.fixture(scope="module")
def clean_and_all_broken_runs(tiny, tmp_path_factory, ray_local):
    """A clean input written by the reference library, and one where no sample decodes."""
    from PIL import Image

    from etl import pipeline
    from tests.mds_cases import write_reference

    clean = tmp_path_factory.mktemp("clean-input")
    images = [Image.open(io.BytesIO(frame)) for frame in jpeg_frames(4, 96, 64, seed=3)]
    write_reference(clean, [{"id": f"c-{i}", "text": f"clean {i}", "frames": images[i % 4:] + images[:i % 4][:1]}
                            for i in range(10)], columns={"id": "str", "text": "str", "frames": "list[jpeg]"},
                    size_limit=1 << 14)
    broken = tmp_path_factory.mktemp("broken-input")
    with MDSWriter(str(broken), columns={"id": "str", "text": "str", "frames": "jpeg_array"}, size_limit=2000) as writer:
        for i in range(10):
            writer.write({"id": f"b-{i}", "text": f"broken {i}", "frames": [b"not an image %d" % i]})
    outputs = {name: tmp_path_factory.mktemp(f"out-{name}") for name in ("clean", "broken")}
    summaries = {name: pipeline.run(_config(path, outputs[name], tiny, max_error_fraction=1.0))
                 for name, path in (("clean", clean), ("broken", broken))}
    return outputs, summaries


@pytest.mark.parametrize("run, empty, full", [("clean", "quarantine", "samples"), ("broken", "samples", "quarantine")])
def test_every_table_exists_after_a_run_even_the_one_with_no_row(clean_and_all_broken_runs, run, empty, full):
    import ray.data
    from deltalake import DeltaTable

    from etl.ingest import read_samples

    outputs, summaries = clean_and_all_broken_runs
    output, summary = outputs[run], summaries[run]
    assert summary.rows.get(full) == 10 and not summary.rows.get(empty), summary.rows
    expected = {"samples": SAMPLES, "quarantine": quarantine_schema()}
    table = DeltaTable(str(output / empty))
    assert table.to_pyarrow_table().num_rows == 0
    assert restore(table.to_pyarrow_table(), expected[empty]).schema.names == expected[empty].names
    assert ray.data.read_delta(str(output / empty)).count() == 0
    assert ray.data.read_delta(str(output / full)).count() == 10
    assert len(DeltaTable(str(output / "runs")).to_pyarrow_table()) == len(summary.shards)
    assert read_samples(str(output)).dataset.count() == (10 if run == "clean" else 0)


def test_a_run_leaves_its_tables_compacted_per_bucket_and_checkpointed(clean_and_all_broken_runs):
    from deltalake import DeltaTable

    outputs, summaries = clean_and_all_broken_runs
    output, summary = outputs["clean"], summaries["clean"]
    assert summary.maintenance_error is None
    health = {entry["table"]: entry for entry in summary.maintenance}
    assert set(health) == {"samples", "quarantine", "runs"}
    samples = DeltaTable(str(output / "samples"))
    assert summary.files["samples"] == health["samples"]["files_before"] > 4  # small files, several rounds
    actions = samples.get_add_actions(flatten=True)
    assert health["samples"]["files_after"] == len(actions) <= 4  # sink.buckets: one file per bucket
    assert len(set(actions.column("partition.bucket").to_pylist())) == len(actions)
    assert samples.to_pyarrow_table(columns=["sample_id"]).num_rows == 10
    for name, entry in health.items():
        table = DeltaTable(str(output / name))
        assert entry["version_after"] == table.version() and entry["replay_after"] == 0, entry
        assert table.metadata().configuration == {"delta.checkpointInterval": "10"}


def test_the_summary_gives_each_operators_declared_memory_beside_what_ray_saw_it_use(clean_and_all_broken_runs, tiny):
    from etl.pipeline import STAGES

    _, summaries = clean_and_all_broken_runs
    memory = {entry["operator"]: entry for entry in summaries["clean"].operator_memory}
    stages = [stage.__name__ for stage in STAGES]
    assert list(memory) == [f"ReadMDS->MapBatches({stages[0]})", *(f"MapBatches({name})" for name in stages[1:])]
    assert memory["MapBatches(DecodeStage)"]["samples"] >= 1
    for name, entry in memory.items():  # an operator whose tasks Ray never sampled is listed, with no figure
        if entry["samples"]:
            assert 50 * 2**20 < entry["observed_max"] < 8 * 2**30, entry  # a worker's USS
        assert entry["ratio"] == (entry["declared"] / entry["observed_max"] if entry["declared"] and entry["samples"]
                                  else None), entry
    # every operator declares, and the decode actors declare their pixel budget's modelled peak
    assert all(entry["declared"] for entry in memory.values()), memory
    from etl.planner import memory as memory_model

    config = _config("unused", "unused", tiny, max_error_fraction=1.0)
    assert memory["MapBatches(DecodeStage)"]["declared"] == memory_model.declared(memory_model.decode_peak(config))


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

    config = _config(tmp_path, tmp_path / "out", tiny, **{"ray.max_retries": 1})
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

def test_only_options_ray_has_no_named_parameter_for_go_through_ray_remote_args(tiny, tmp_path):
    """`ray_remote_args` is deprecated (removed in Ray 2.64): the job passes every option Ray
    names by its name. The retry bounds have no named parameter in Ray 2.60; when Ray adds one,
    this fails and says which to move."""
    import inspect

    import ray.data

    from etl.pipeline import retry_bounds

    task_retries, actor_retries = retry_bounds(_config(tmp_path, tmp_path / "out", tiny))
    named = set(inspect.signature(ray.data.read_datasource).parameters) | set(
        inspect.signature(ray.data.Dataset.map_batches).parameters)
    assert task_retries and actor_retries
    assert not (set(task_retries) | set(actor_retries)) & named, "Ray names it now: pass it by name"
