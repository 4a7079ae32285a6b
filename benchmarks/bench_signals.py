"""What the curation signals cost per sample, each side by side with the stage without it, in one
process, interleaved rounds, median:

- CPU stage: `decode_frame` on 1280x720 JPEGs with and without the frame hashes (pixel xxh3-128
  + pHash), and each hash alone on the decoded frames;
- encode stage: the frame encoders (embedder + VAE, as `EncodeStage` runs them) with and without
  the embedder's text tower (the caption's embedding, its score, and the sample's own text's
  score), for the tiny CLIP and for a CLIP of ViT-B/32's shape (random weights, built here from
  transformers' default `CLIPConfig`, saved and loaded with `from_pretrained`).

    python benchmarks/bench_signals.py [--frames 64] [--samples 32] [--rounds 5]
"""

import argparse
import io
import json
import statistics
import time

import numpy as np

from common import DATA, RESULTS

from etl.synthetic import jpeg_frames
from etl.transforms.frames import FrameSpec, decode_frame
from etl.transforms.hashes import perceptual_hash, pixel_hash


def _median_rate(work, count: int, rounds: int) -> dict:
    """{name: items/s} of each callable in `work`, run in turn `rounds` times (median)."""
    times = {name: [] for name in work}
    for _ in range(rounds):
        for name, run in work.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: count / statistics.median(spent) for name, spent in times.items()}


def cpu_stage(frame_count: int, rounds: int) -> dict:
    from PIL import Image

    frames = jpeg_frames(frame_count, 1280, 720, seed=7)
    with_hashes, without = FrameSpec(max_pixels=448 * 448), FrameSpec(max_pixels=448 * 448, hashes=False)
    decoded = [Image.open(io.BytesIO(f)).convert("RGB").reduce(2) for f in frames]  # what draft gives: 640x360
    rates = _median_rate({
        "decode_frame with hashes": lambda: [decode_frame(f, with_hashes) for f in frames],
        "decode_frame without hashes": lambda: [decode_frame(f, without) for f in frames],
        "pixel hash alone (640x360)": lambda: [pixel_hash(i) for i in decoded],
        "pHash alone (640x360)": lambda: [perceptual_hash(i) for i in decoded],
    }, frame_count, rounds)
    rates["hash share of the CPU stage"] = 1 - rates["decode_frame with hashes"] / rates["decode_frame without hashes"]
    return rates


def _clip_b32(path) -> str:
    """A CLIP of ViT-B/32's shape with random weights and the tiny CLIP tokenizer, saved once."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from etl.models.tiny import _clip_tokenizer

    if (path / "config.json").exists():
        return str(path)
    tokenizer = _clip_tokenizer()
    config = CLIPConfig()  # transformers' default: openai/clip-vit-base-patch32's shape
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def encode_stage(clip: str, vae: str, samples: int, rounds: int) -> dict:
    import torch

    from etl.models.encoders import FrameEncoders, pool_per_sample
    from etl.models.text_encoders import TextTower

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    views = [rng.integers(0, 256, (224, 320, 3), dtype=np.uint8) for _ in range(samples)]
    captions = [f"a photo of {i} things on a table, in warm light, taken from above" for i in range(samples)]
    texts = [f"user text {i}: holiday picture" for i in range(samples)]
    encoders = FrameEncoders(clip, vae, embedder_batch_size=samples, vae_batch_size=samples)
    tower = TextTower(encoders.embedder.model, clip, device=encoders.device, batch_size=samples)

    def frames_only():
        return encoders.encode_views(views, 224)

    def with_text():
        embeddings, _ = encoders.encode_views(views, 224)
        pooled = pool_per_sample(embeddings, np.ones(samples, np.int64))
        return np.sum(tower(captions) * pooled, axis=1), np.sum(tower(texts) * pooled, axis=1)

    rates = _median_rate({"frames only": frames_only, "frames + text tower": with_text}, samples, rounds)
    rates["text tower share of the stage"] = 1 - rates["frames + text tower"] / rates["frames only"]
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    from etl.models.tiny import ensure_tiny_models

    torch.set_num_threads(2)
    tiny = ensure_tiny_models(DATA / "tiny-models")
    result = {"cpu_stage_frames_per_s": cpu_stage(args.frames, args.rounds),
              "encode_stage_samples_per_s": {
                  "tiny CLIP": encode_stage(str(tiny["clip"]), str(tiny["vae"]), args.samples, args.rounds),
                  "CLIP ViT-B/32 shape": encode_stage(_clip_b32(DATA / "clip-b32-random"), str(tiny["vae"]),
                                                      args.samples, max(2, args.rounds // 2))},
              "settings": vars(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "signals.json").write_text(json.dumps(result, indent=2))
    for section, figures in result.items():
        if section == "settings":
            continue
        print(section)
        for name, value in figures.items():
            if isinstance(value, dict):
                print(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in value.items()))
            else:
                print(f"  {name}: {value:.3g}")


if __name__ == "__main__":
    main()
