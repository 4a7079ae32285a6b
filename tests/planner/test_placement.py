"""Placement: what each stage gets on a cluster, and the refusals that name their fix."""

import pytest

from etl import planner
from etl.config import load_config
from etl.job_input import assumed_read_tasks
from etl.planner import GIB, EncoderFootprint, Footprints, ModelFootprint, NodeType, PlanError, memory

# Qwen3-VL-8B-like: 17.5 GB of bf16 weights; 36 layers x 8 KV heads x 128 dims; 32 px per token side
QWEN_8B = ModelFootprint(int(17.5e9), 2 * 36 * 8 * 128 * 2, 32, 2)
# SigLIP-so400m (384 px, 1152 wide) + the SD VAE (128 channels first, 4 latent channels at 1/8)
ENCODERS = EncoderFootprint(int(1.0e9), embedder_pixels=384 * 384, embedding_dim=1152, vae_channels=128,
                            latent_channels=4, latent_downscale=8)
FIELD_SHARDS = [266_000_000] * 966


def plan_of(nodes, config, footprints, shard_sizes):
    """The plan for shards of these decoded sizes, grouped into read tasks as the job groups them."""
    return planner.plan(nodes, config, footprints, assumed_read_tasks(config, shard_sizes))


def production(**overrides):
    return load_config(None, {"input": "s3://in", "output": "s3://out", "models.captioner.backend": "vllm",
                              "frames.max_pixels": 448 * 448, **overrides})


def gib_node(name, cpus, ram_gib, gpus=0, accelerator=None, count=1):
    """A node of `ram_gib` physical memory: Ray schedules 70% of it, the object store has 30%."""
    return NodeType(name, cpus, int(ram_gib * 0.7 * GIB), gpus, accelerator, count=count,
                    object_store_bytes=int(ram_gib * 0.3 * GIB))


def test_field_report_160_preprocessors_and_20_four_cpu_engines_on_56_cpus_is_refused():
    config = production(**{"resources.decode.actors": 160, "resources.captioner.engines": 20,
                           "resources.captioner.cpus_per_engine": 4})
    with pytest.raises(PlanError) as refused:
        plan_of([gib_node("gpu", 56, 512, 8, "A100-80G")], config, Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    message = str(refused.value)
    assert "resources.captioner.engines=20 but the cluster holds 8" in message
    assert "resources.decode.actors=160" in message and "the cluster has 56 CPUs" in message
    # the fix it names is one that fits
    fixed = int(message.split("set resources.decode.actors <= ")[1].split(",")[0])
    plan = plan_of([gib_node("gpu", 56, 512, 8, "A100-80G")],
                        production(**{"resources.decode.actors": fixed, "resources.captioner.cpus_per_engine": 4}),
                        Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    used = plan.nodes[0].cpus_used
    assert plan.decode_actors == fixed and plan.engines == 8 and used <= 56


def test_field_report_two_engines_on_a_64_gb_node_are_refused_one_fits():
    nodes = [gib_node("g5-2gpu", 16, 64, 2, "L40S", count=4)]
    with pytest.raises(PlanError, match=r"engines_per_node=2 does not fit; its RAM fit 1"):
        plan_of(nodes, production(**{"resources.captioner.engines_per_node": 2}),
                     Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    plan = plan_of(nodes, production(), Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    assert plan.nodes[0].engines == 1 and plan.engines == 4
    # the second GPU is left whole, so the encoders get it rather than a share
    assert plan.nodes[0].encoders == 1 and plan.encoder_gpus == 1.0 and plan.engine_gpus == 1.0
    # and two engines do fit where the RAM is there
    roomy = plan_of([gib_node("big", 32, 192, 2, "L40S")], production(), Footprints(QWEN_8B, ENCODERS),
                         FIELD_SHARDS)
    assert roomy.nodes[0].engines == 2


def test_field_report_16_read_tasks_for_966_shards_of_266_mb_is_refused_and_defaults_give_one_per_shard():
    nodes = [gib_node("gpu", 48, 384, 4, "L40S", count=4), gib_node("cpu", 64, 256, count=8)]
    with pytest.raises(PlanError, match=r"966 shards in only 16 read tasks .* set read.shards_per_task <= 1"):
        plan_of(nodes, production(**{"read.shards_per_task": 61, "read.max_task_mb": 20_000}),
                     Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    plan = plan_of(nodes, production(), Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    assert (plan.read_tasks, plan.shards_per_task) == (966, 1)
    # one shard, the blocks cut from it and the worker, with Ray's headroom
    assert plan.read_task_memory == memory.declared(memory.DATA_WORKER_BYTES + 266_000_000 + 2 * planner.READ_BLOCK_BYTES)
    description = plan.describe()
    assert "966 shards in 966 tasks" in description and "cpu" in description and "4xL40S" in description


def test_every_node_fits_what_is_placed_on_it():
    nodes = [gib_node("gpu", 48, 384, 4, "L40S", count=4), gib_node("cpu", 64, 256, count=8)]
    plan = plan_of(nodes, production(), Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    for node in plan.nodes:
        assert node.cpus_used <= node.node_type.cpus
        assert node.memory_bytes <= node.node_type.memory_bytes
    gpu = plan.nodes[0]
    assert gpu.engines == 4 and gpu.encoders == 4            # one engine per GPU, an encoder beside each
    assert plan.engine_gpus + plan.encoder_gpus == 1.0
    assert plan.engines == 16 and plan.encoders == 16
    assert plan.decode_actors == sum(n.decode_actors * n.node_type.count for n in plan.nodes)


def test_engine_that_does_not_fit_gpu_memory_names_tensor_parallelism():
    nodes = [gib_node("a10g", 48, 192, 4, "A10G")]
    long = {"models.captioner.max_model_len": 32768}  # 4.5 GiB of KV beside 16.3 GiB of weights
    with pytest.raises(PlanError, match=r"needs .* per GPU .* set models.captioner.tensor_parallel_size=2"):
        plan_of(nodes, production(**long), Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    assert plan_of(nodes, production(), Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS).engines == 4  # 8K fits
    plan = plan_of(nodes, production(**long, **{"models.captioner.tensor_parallel_size": 2,
                                                     "resources.captioner.engines_per_node": 1}),
                        Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    assert plan.engine_gpus == 2 and plan.nodes[0].encoders == 2 and plan.encoder_gpus == 1.0


def test_token_budget_and_unknown_gpu_and_missing_gpus_are_refused():
    nodes = [gib_node("gpu", 48, 384, 4, "L40S")]
    with pytest.raises(PlanError, match=r"raise it to >= \d+"):
        plan_of(nodes, production(**{"models.captioner.max_model_len": 1024}), Footprints(QWEN_8B, ENCODERS),
                     FIELD_SHARDS)
    with pytest.raises(PlanError, match="set resources.gpu_memory_gb"):
        plan_of([gib_node("x", 48, 384, 4, "MYSTERY-GPU")], production(), Footprints(QWEN_8B, ENCODERS),
                     FIELD_SHARDS)
    assert plan_of([gib_node("x", 48, 384, 4, "MYSTERY-GPU")], production(**{"resources.gpu_memory_gb": 48}),
                        Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS).engines == 4
    with pytest.raises(PlanError, match="tensor_parallel_size=2 needs GPU nodes with 2 GPUs"):
        plan_of([gib_node("cpu", 64, 256)], production(**{"models.captioner.tensor_parallel_size": 2}),
                     Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS)
    # video mode: two frames per temporal patch, so half the vision tokens
    images = planner.request_tokens(production(), QWEN_8B)
    video = planner.request_tokens(production(**{"models.captioner.frames_as": "video"}), QWEN_8B)
    answer = production().models.captioner.new_tokens
    assert video - 160 - answer == (images - 160 - answer) // 2


def test_vllm_on_a_cpu_node_binds_whole_cores_and_declares_its_kv_cache():
    node = gib_node("cpu", 64, 256)
    plan = plan_of([node], production(), Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS[:64])
    assert (plan.backend, plan.engines, plan.engine_gpus, plan.engine_cpus, plan.engine_cores) == ("vllm", 1, 0, 32, 32)
    per_request = -(-plan.request_tokens // 128) * 128  # whole KV blocks
    assert plan.kv_cache_bytes == QWEN_8B.kv_bytes_per_token * 64 * per_request  # max_num_seqs requests
    assert plan.engine_memory == memory.declared(QWEN_8B.weights_bytes + plan.kv_cache_bytes + 4 * GIB  # mm cache
                                                 + planner.VLLM_CPU_RUNTIME_BYTES)
    assert plan.decode_actors == int(64 - 32 - 0.4 - plan.nodes[0].task_slots * 0.1)
    assert "of it KV cache" in plan.describe() and any("KV cache" in note for note in plan.notes)
    with pytest.raises(PlanError, match="cpus_per_engine=2.5: a vLLM engine on a CPU node binds its threads to whole"):
        plan_of([node], production(**{"resources.captioner.cpus_per_engine": 2.5}),
                     Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS[:64])
    # 64 sequences of ~4K tokens of an 8B model's KV (30 GiB) do not fit beside its weights in 96 GiB;
    # 4 do, with the encoders, a writer and 32 read tasks of one 266 MB shard each beside them
    with pytest.raises(PlanError, match="what is placed declares"):
        plan_of([gib_node("cpu", 64, 96)], production(), Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS[:64])
    smaller = plan_of([gib_node("cpu", 64, 96)], production(**{"models.captioner.max_num_seqs": 4}),
                           Footprints(QWEN_8B, ENCODERS), FIELD_SHARDS[:64])
    assert smaller.kv_cache_bytes < plan.kv_cache_bytes // 10


def test_two_cpu_machine_gets_one_of_each_and_leaves_room_for_tasks(tiny):
    config = load_config("jobs/configs/local.yaml", {"input": "x", "output": "y",
                                                      "models.captioner.model": str(tiny["qwen3_vl"]),
                                                      "models.embedder.model": str(tiny["clip"]),
                                                      "models.vae.model": str(tiny["vae"])})
    plan = plan_of([NodeType("local", 2, 8 * GIB)], config, planner.footprints_of(config), [10 << 20] * 12)
    assert (plan.engines, plan.encoders, plan.decode_actors) == (1, 1, 1)
    assert (plan.backend, plan.engine_cpus, plan.engine_cores) == ("vllm", 1, 1)  # one core bound to the engine
    assert plan.engine_cpus + plan.encoder_cpus + plan.decode_cpus + 0.5 == pytest.approx(2.0)
    assert plan.read_tasks == 6 and plan.engine_gpus == 0
    with pytest.raises(PlanError, match="resources.decode.actors <= 1"):
        plan_of([NodeType("local", 2, 8 * GIB)], config.model_copy(update={"resources": config.resources.model_copy(
            update={"decode": config.resources.decode.model_copy(update={"actors": 3})})}),
            planner.footprints_of(config), [10 << 20] * 12)
    with pytest.raises(PlanError, match="what is placed declares"):
        plan_of([NodeType("small", 2, 2 * GIB)], config, planner.footprints_of(config), [10 << 20] * 12)
