"""Host memory per unit of each stage: a modelled peak from measured parts, and what the job
declares to Ray for it, RAY_HEADROOM x that peak (Ray Data's high-memory detector warns at the
end of a run when 1.25 x the largest USS it sampled of an operator's workers exceeds what the
operator declared). The parts:
- a worker's runtime: Python, Ray's core worker, Ray Data and pyarrow (read, decode, write), and
  torch, transformers and diffusers beside them (encoders, the transformers captioner);
- the model's weights, which load through host memory;
- activations at the configured batch sizes, per input pixel or token, from the model's config;
- the data one batch holds, times the copies its stage makes of it.

The constants were measured on this repository's runs (MiB of USS per worker: Ray's samples and
RSS less shared pages sampled every 0.5 s): `benchmarks/bench_memory_declared.py` runs the job
(the scale runs' job on 10K samples, and the demo's: vLLM, 10 frames of 320x180 a sample) and
prints declared / observed per operator, the check that these sums hold.
"""

from etl.batch_sizes import decode_batch_bytes
from etl.planner.footprints import EncoderFootprint, ModelFootprint
from etl.planner.units import GIB, MIB

RAY_HEADROOM = 1.25  # Ray Data's high-memory detector: declared < 1.25 x observed warns

# A Ray Data worker with pyarrow and the job's modules imported, its allocator's retained pages
# included: read tasks peaked at 111-118 MiB on 1.6 MB shards and 128-134 MiB on the demo's
# shards of 10-frame samples, the write actor's setup at 111.
DATA_WORKER_BYTES = 130 * MIB
# The same with torch, transformers and diffusers, and the tiny encoders loaded: 474 MiB in a
# bare actor, 520 MiB as the encode stage's actor after setup (the captioner's: 514).
TORCH_WORKER_BYTES = 520 * MIB
# Beside it on a GPU node: the CUDA context and the pinned upload buffer in host memory. Not
# measured here (no GPU on the machine these figures come from): the earlier allowance.
CUDA_HOST_BYTES = 1 * GIB
# Three processes (the actor, vLLM's engine core and its worker) each import torch and vLLM:
# 2.9 GiB of USS over the three with the tiny Qwen3-VL after captioning, of which 0.25 GiB
# multimodal cache and 0.1 GiB KV cache (counted apart).
VLLM_CPU_RUNTIME_BYTES = 2900 * MIB

READ_BLOCK_BYTES = 16 * MIB  # encoded bytes per read block: small enough to pipeline
# Copies a decode batch's pixels reach: the decoded frames, their Arrow lists, the output block
# Ray Data builds, and pyarrow's pool keeping freed pages (measured 5-7x: 150 MiB USS at a 6 MiB
# batch, 501-527 MiB at 63 MiB).
DECODE_COPIES = 7
# Encoder activations on a CPU node, per input value: the embedder's float frames, resized and
# normalised (4-byte copies, measured 3.7 live at batch 256), the VAE's first block (4 bytes a
# channel a pixel), and the frames themselves: Arrow views and crops in, the cropped tensor and
# the float copies a resize makes (measured ~4.7 bytes kept per frame byte).
EMBEDDER_LIVE_COPIES = 4.5
VAE_LIVE_TENSORS = 4
FRAME_COPIES = 5
# The transformers captioner's generate: hidden states, cache and logits per token of the batch,
# fitted on the tiny Qwen3-VL (218 MiB over 64 requests of 172 tokens). The production path is
# vLLM, whose memory vLLM itself bounds.
TRANSFORMERS_BYTES_PER_TOKEN = 24 * 1024
# A write batch: its good rows filtered out, sorted by bucket (a `take`), each bucket's slice
# encoded and compressed as Parquet, and the pool's retained pages. Measured on WriteStage alone
# (256 buckets, 10 frames of 1152-wide embeddings and 4x48x48 latents a row): 4.4-4.8 copies of
# the batch at 256-4096 rows (102 MiB-1.6 GiB), and 20-36 MiB above the start whatever the size
# (3-8 MiB batches of the tiny models' rows). In the job's write actor the rest is not in the
# batch's bytes: 144-152 MiB USS at 2048 one-frame rows (3.9 MB; the scale runs' job) against
# 199-220 MiB at 64 ten-frame rows (8 MB; the demo's). The fixed part is sized so the larger
# never passes Ray's detector; the smaller is then over-declared 1.7x.
WRITE_COPIES = 5
WRITE_BATCH_FIXED_BYTES = 56 * MIB
ROW_FIXED_BYTES = 512  # ids, shard, row, scores, model names, run id, stage stamps


def declared(peak: int) -> int:
    """What a unit whose modelled peak is `peak` declares to Ray."""
    return int(RAY_HEADROOM * peak)


def read_task_peak(largest_shard_bytes: int) -> int:
    """A read task (fused with prepare) holds one shard and the blocks it cuts from it."""
    return DATA_WORKER_BYTES + largest_shard_bytes + 2 * min(largest_shard_bytes, READ_BLOCK_BYTES)


def decode_peak(config) -> int:
    return DATA_WORKER_BYTES + DECODE_COPIES * decode_batch_bytes(config)


def encoder_activation_bytes(config, encoders: EncoderFootprint) -> int:
    """The larger of one embedder batch's and one VAE batch's activations (they run in turn)."""
    models, crop_pixels = config.models, config.frames.crop_size ** 2
    embedder = models.embedder.batch_size * encoders.embedder_pixels * 3 * 4 * EMBEDDER_LIVE_COPIES
    vae = models.vae.batch_size * crop_pixels * encoders.vae_channels * 4 * VAE_LIVE_TENSORS
    return int(max(embedder, vae))


def encode_batch_frame_bytes(config) -> int:
    """The pixels one encode batch brings: every frame's captioner view and crop."""
    frames = config.frames
    return config.models.embedder.batch_size * frames.max_frames * 3 * (frames.max_pixels + frames.crop_size ** 2)


def encoder_peak(config, encoders: EncoderFootprint, on_gpu: bool) -> int:
    """Host memory of the encode actor: on a GPU node the activations live on the device."""
    frames = FRAME_COPIES * encode_batch_frame_bytes(config)
    if on_gpu:
        return TORCH_WORKER_BYTES + CUDA_HOST_BYTES + encoders.weights_bytes + frames
    return TORCH_WORKER_BYTES + encoders.weights_bytes + encoder_activation_bytes(config, encoders) + frames


def transformers_captioner_peak(config, captioner: ModelFootprint, tokens: int) -> int:
    batch_tokens = config.models.captioner.batch_size * tokens
    return TORCH_WORKER_BYTES + captioner.weights_bytes + batch_tokens * TRANSFORMERS_BYTES_PER_TOKEN


def vllm_cpu_peak(config, captioner: ModelFootprint, kv_cache_bytes: int) -> int:
    """The actor and its engine's processes: weights, the KV cache vLLM is given, the
    multimodal cache and their runtime."""
    mm_cache = int(config.models.captioner.mm_cache_gb * GIB)
    return captioner.weights_bytes + kv_cache_bytes + mm_cache + VLLM_CPU_RUNTIME_BYTES


def sample_row_bytes(config, encoders: EncoderFootprint) -> int:
    """The most a samples row holds: a pooled embedding and the caption's, and per frame an
    embedding and a latent (float32) and its hashes, the caption (a byte a character: captions
    are mostly ASCII), its text states and the fixed columns."""
    frames, side = config.frames, config.frames.crop_size // encoders.latent_downscale
    per_frame = 4 * (encoders.embedding_dim + encoders.latent_channels * side * side) + 16 + 48  # + size, hashes
    length, width = encoders.text_states
    text_states = length * width * 4 + length  # float32 states, an int8 mask
    return 8 * encoders.embedding_dim + frames.max_frames * per_frame + config.models.captioner.caption_max_chars \
        + text_states + ROW_FIXED_BYTES


def write_peak(config, encoders: EncoderFootprint) -> int:
    batch = config.sink.rows_per_write * sample_row_bytes(config, encoders)
    return DATA_WORKER_BYTES + WRITE_BATCH_FIXED_BYTES + WRITE_COPIES * batch
