"""The row contract: each stage, run on real batches in plan order, adds and drops exactly the
columns its step declares, in the declared types; a plan whose stage reads a column no earlier
stage adds is refused before any work; the pipeline asks Ray for what each step declares."""

import pyarrow as pa
import pytest

from etl import pipeline, planner, storage
from etl.config import load_config
from etl.job_input import job_source
from etl.mds import MDSWriter, load_index
from etl.planner import GIB, NodeType
from etl.stages import rows
from etl.stages.caption import CaptionStage
from etl.stages.previews import PreviewRows
from etl.stages.stage import ContractError, RunContext, check_contract
from etl.synthetic import jpeg_frames


@pytest.fixture(scope="module")
def context(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("contract-input")
    pool = jpeg_frames(4, 96, 64)
    with MDSWriter(str(path), columns={"id": "str", "text": "str", "frames": "jpeg_array", "fps": "float64",
                                       "unused": "bytes"}) as writer:
        for i in range(10):
            frames = [pool[(i + k) % 4] for k in range(1 + i % 3)] if i != 7 else [b"not an image"]
            writer.write({"id": f"s{i}", "text": f"sample {i}", "frames": frames, "fps": 2.0, "unused": b"x" * 100})
    config = pipeline.absolute_model_paths(load_config("jobs/configs/local.yaml", {
        "input": str(path), "output": str(tmp_path_factory.mktemp("contract-output")), "read.id_column": "id",
        "read.text_column": "text", "read.fps_column": "fps", "frames.min_pixels": 32 * 32,
        "frames.max_pixels": 64 * 64, "frames.crop_size": 64, "models.captioner.backend": "transformers",
        "models.captioner.max_new_tokens": 8, "models.captioner.model": str(tiny["qwen3_vl"]),
        "models.embedder.model": str(tiny["clip"]), "models.vae.model": str(tiny["vae"])}))
    index = load_index(*storage.resolve(config.input))
    source, image_column = job_source(config, index, None)
    plan = planner.plan([NodeType("local", 2, 8 * GIB)], config, planner.footprints_of(config), source.read_tasks)
    return RunContext(config, plan, "contract", image_column, dict(zip(source.schema.names, source.schema.types)),
                      pipeline.table_schemas(config), PreviewRows((0,), 2)), source


def test_each_stage_adds_and_drops_exactly_what_it_declares(context):
    run, source = context
    steps = [stage.step(run) for stage in pipeline.STAGES]
    assert "unused" not in run.input_types  # the job reads only the columns it names
    check_contract(steps, run.input_types)
    batch = pa.concat_tables([block for task in source.get_read_tasks(1) for block in task()])
    assert batch.num_rows == 10
    for step in steps:
        declared = step.columns_after(dict(zip(batch.schema.names, batch.schema.types)))
        batch = step.stage(*step.arguments)(batch)
        assert sorted(batch.schema.names) == sorted(declared), step.name
        assert {name: batch.schema.field(name).type for name in step.adds} == step.adds, step.name
    kinds = batch.column("kind").to_pylist()
    assert kinds[-1] == rows.COUNTS and set(kinds[:-1]) == {rows.FILE}
    assert set(batch.column("table").to_pylist()[:-1]) == {"samples", "quarantine"}  # sample 7 is broken


def test_a_stage_reading_a_column_no_stage_before_it_adds_is_refused(context):
    run, _ = context
    steps = [stage.step(run) for stage in pipeline.STAGES if stage.__name__ != "DecodeStage"]
    with pytest.raises(ContractError, match=r"CaptionStage reads \['caption_frames'\], which no stage before it adds"):
        check_contract(steps, run.input_types)


def test_the_pipeline_asks_ray_for_what_each_step_declares(context, ray_local):
    import ray.data

    run, _ = context
    step = CaptionStage.step(run.__class__(**{**run.__dict__, "config": run.config.model_copy(update={
        "models": run.config.models.model_copy(update={"captioner": run.config.models.captioner.model_copy(
            update={"backend": "vllm"})})})}))
    assert step.resources.concurrent_batches == 2
    operator = pipeline.stage_dataset(ray.data.range(4), step, ({}, {}))._logical_plan.dag
    assert operator.compute.max_concurrent_calls_per_actor == 2 and operator.compute.enable_true_multi_threading
    assert operator.compute.min_size == operator.compute.max_size == step.resources.actors
    assert operator.ray_remote_args["num_cpus"] == step.resources.cpus
    assert operator.ray_remote_args["memory"] == step.resources.memory
