"""Each unit's declared memory follows its measured model: the parts grow with what the config
asks of them (batches, pixels, shards, frames) and nothing else, and every declaration carries
Ray's headroom. Whole runs check the sums (benchmarks/bench_memory_declared.py, and
tests/test_pipeline.py against Ray's own samples)."""

import pytest

from etl.batch_sizes import DECODE_BUDGET_BYTES, decode_batch_bytes
from etl.config import load_config
from etl.planner import MIB, RAY_HEADROOM, memory
from tests.planner.test_placement import ENCODERS as SIGLIP_AND_SD_VAE  # SigLIP-so400m + the SD VAE


def config(**overrides):
    return load_config(None, {"input": "s3://in", "output": "s3://out", **overrides})


def test_a_declaration_is_the_modelled_peak_with_rays_headroom():
    assert memory.declared(100 * MIB) == int(RAY_HEADROOM * 100 * MIB)
    assert RAY_HEADROOM == 1.25  # what Ray Data's high-memory detector adds to the USS it saw


def test_a_read_task_holds_its_largest_shard_and_at_most_two_blocks_of_it():
    small, big = memory.read_task_peak(2 * MIB), memory.read_task_peak(1024 * MIB)
    assert small == memory.DATA_WORKER_BYTES + 3 * 2 * MIB
    assert big == memory.DATA_WORKER_BYTES + 1024 * MIB + 2 * memory.READ_BLOCK_BYTES


@pytest.mark.parametrize("max_pixels", [64 * 64, 224 * 224, 448 * 448, 1280 * 720])
def test_decode_memory_follows_the_pixel_budget_and_never_passes_it(max_pixels):
    settings = config(**{"frames.max_pixels": max_pixels, "frames.min_pixels": 64 * 64})
    batch = decode_batch_bytes(settings)
    assert 0 < batch <= DECODE_BUDGET_BYTES
    assert memory.decode_peak(settings) == memory.DATA_WORKER_BYTES + memory.DECODE_COPIES * batch
    fewer_frames = config(**{"frames.max_pixels": max_pixels, "frames.min_pixels": 64 * 64, "frames.max_frames": 1,
                             "models.captioner.batch_size": 4})
    assert memory.decode_peak(fewer_frames) <= memory.decode_peak(settings)


def test_encoder_activations_grow_with_each_models_batch_on_a_cpu_node_and_stay_off_host_memory_on_a_gpu():
    base = config(**{"models.embedder.batch_size": 32, "models.vae.batch_size": 8})
    bigger_embedder = config(**{"models.embedder.batch_size": 64, "models.vae.batch_size": 8})
    bigger_vae = config(**{"models.embedder.batch_size": 32, "models.vae.batch_size": 64})
    cpu = {name: memory.encoder_peak(c, SIGLIP_AND_SD_VAE, on_gpu=False)
           for name, c in (("base", base), ("embedder", bigger_embedder), ("vae", bigger_vae))}
    assert cpu["embedder"] > cpu["base"] and cpu["vae"] > cpu["base"]
    # the SD VAE at 64 frames of the default 224 px crop: 64 x 50176 px x 128 channels x 4 B x its
    # live tensors
    assert bigger_vae.frames.crop_size == 224
    assert memory.encoder_activation_bytes(bigger_vae, SIGLIP_AND_SD_VAE) == \
        64 * 224 * 224 * 128 * 4 * memory.VAE_LIVE_TENSORS
    on_gpu = memory.encoder_peak(bigger_vae, SIGLIP_AND_SD_VAE, on_gpu=True)
    assert on_gpu == memory.encoder_peak(base, SIGLIP_AND_SD_VAE, on_gpu=True) - \
        memory.FRAME_COPIES * memory.encode_batch_frame_bytes(base) + \
        memory.FRAME_COPIES * memory.encode_batch_frame_bytes(bigger_vae)
    assert on_gpu < cpu["vae"]


def test_write_memory_grows_with_the_rows_per_write_and_the_rows_tensors():
    one_frame = config(**{"frames.max_frames": 1})
    row = memory.sample_row_bytes(one_frame, SIGLIP_AND_SD_VAE)
    latent = 4 * 4 * (224 // 8) ** 2  # float32 4 x 28 x 28 at the default crop, 224
    assert row >= 2 * 4 * 1152 + latent
    assert memory.sample_row_bytes(config(), SIGLIP_AND_SD_VAE) > 9 * latent  # ten frames
    small, large = (memory.write_peak(config(**{"sink.rows_per_write": n}), SIGLIP_AND_SD_VAE) for n in (64, 4096))
    assert large - small == memory.WRITE_COPIES * (4096 - 64) * memory.sample_row_bytes(config(), SIGLIP_AND_SD_VAE)
    assert small > memory.DATA_WORKER_BYTES + memory.WRITE_BATCH_FIXED_BYTES
