"""Check a real GPU cluster in one command, before a long run:

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml -- \\
        python -m jobs.smoke_gpu --config jobs/configs/production.yaml

1. plans the config against the live cluster (what `jobs.curate` would ask Ray for);
2. on one GPU, with the resources the plan gives an engine: loads the configured captioner
   (vLLM) and captions a few synthetic multi-frame samples; structured output must give every
   answer caption + scores (no parse errors);
3. on one GPU: runs the embedder and VAE on a batch of frames as the CPU stage sends them
   (captioner views, the centre crops cut on the GPU), checks shapes and finiteness, and
   reports frames/s.
Prints one line per check and exits 1 on the first failure.
"""

import argparse
import sys
import time

import numpy as np


def _frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def check_captioner(config) -> dict:
    from etl.models.captioner import CaptionSample
    from etl.models.captioner_factory import captioner_from_config

    started = time.perf_counter()
    captioner = captioner_from_config(config)
    loaded = time.perf_counter() - started
    side = captioner.frame_factor * 8  # a valid smart-resized frame size
    samples = [CaptionSample(list(_frames(frames, side, side, i)), "smoke test", f"smoke-{i}")
               for i, frames in enumerate((1, 2, min(4, config.frames.max_frames)) * 4)]
    started = time.perf_counter()
    results = captioner.caption(samples)
    seconds = time.perf_counter() - started
    return {"load_s": round(loaded, 1), "samples": len(results), "samples_per_s": round(len(results) / seconds, 2),
            "parse_errors": [r.parse_error for r in results if r.parse_error], "example": results[0].raw[:200]}


def check_encoders(config, frames: int = 256) -> dict:
    import torch

    from etl.models.encoders import FrameEncoders
    from etl.stages.decode import frame_spec

    models = config.models
    encoders = FrameEncoders(models.embedder.model, models.vae.model, embedder_batch_size=models.embedder.batch_size,
                             vae_batch_size=models.vae.batch_size)

    # what the CPU stage sends the GPU encoders for a 1280x720 frame under this config: its
    # captioner view, or the crop itself where that view is too small to cut the crop from
    spec = frame_spec(config, encoders_on_gpu=True)
    crop = spec.crop_size
    width, height = spec.caption_size(1280, 720)
    if spec.crop_made_here((width, height)):
        width = height = crop
    batch = _frames(frames, height, width, 0)
    encoders.encode_views(list(batch[:8]), crop)  # warm-up: kernels, allocator
    started = time.perf_counter()
    embeddings, latents = encoders.encode_views(list(batch), crop)  # results are on the host: the GPU work is done
    seconds = time.perf_counter() - started
    cuda = encoders.device.startswith("cuda")
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "frames_per_s": round(frames / seconds, 1),
            "embedding": list(embeddings.shape), "latents": list(latents.shape),
            "finite": bool(np.isfinite(embeddings).all() and np.isfinite(latents).all()),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() // (1 << 20) if cuda else 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.smoke_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ray-address", help="default: the cluster of `ray job submit`")
    args = parser.parse_args(argv)

    import ray

    from etl import planner
    from etl.config import load_config
    from etl.job_input import assumed_read_tasks

    config = load_config(args.config, {"input": "(smoke test)", "output": "(smoke test)"})
    ray.init(address=args.ray_address, log_to_driver=True)
    nodes = planner.nodes_from_ray(ray.nodes())
    try:
        plan = planner.plan(nodes, config, planner.footprints_of(config), assumed_read_tasks(config, []))
    except planner.PlanError as exc:
        print(f"FAIL plan: {exc}")
        return 1
    print(f"ok   plan: {plan.engines} engine(s), {plan.encoders} encoder actor(s), {plan.decode_actors} decode actor(s)")
    if not plan.engine_gpus:
        print("FAIL the plan has no GPU for the captioner: this cluster has no GPU nodes")
        return 1
    captioner = ray.remote(num_gpus=plan.engine_gpus if plan.engine_gpus >= 1 else 1, num_cpus=plan.engine_cpus,
                           memory=plan.engine_memory)(check_captioner)
    result = ray.get(captioner.remote(config))
    status = "ok  " if result["samples"] and not result["parse_errors"] else "FAIL"
    print(f"{status} captioner: {result}")
    if status == "FAIL":
        return 1
    encoders = ray.remote(num_gpus=1, num_cpus=plan.encoder_cpus, memory=plan.encoder_memory)(check_encoders)
    result = ray.get(encoders.remote(config))
    status = "ok  " if result["finite"] else "FAIL"
    print(f"{status} encoders: {result}")
    return 0 if status == "ok  " else 1


if __name__ == "__main__":
    sys.exit(main())
