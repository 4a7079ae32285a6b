"""Frame decode: JPEG DCT-scaled decode (`draft`) against full decode, speed and pixel error.

    python benchmarks/bench_frame_decode.py [--frames 64] [--rounds 5]

One process, one core, the same 1280x720 frames for every variant, interleaved rounds, median.
"decode_frame" is the CPU stage's per-frame work (checks, EXIF, mode, the Qwen smart-resize
view; the encoders cut their 224 px crop from that view on their device); "Pillow loop" is the
bare decode + one resize to fit 448 px, the per-core ceiling the stage is held to. Last, the
stage's Arrow column of those views, built from Python cells against `view_lists`.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl.synthetic import jpeg_frames  # noqa: E402
from etl.transforms.frames import PIXEL_VIEW_TYPE, FrameSpec, decode_frame, view_lists  # noqa: E402


def pillow_loop(frames, draft):
    import io

    from PIL import Image

    for data in frames:
        image = Image.open(io.BytesIO(data))
        if draft:
            image.draft("RGB", (448, 252))
        image = image.convert("RGB")
        image.thumbnail((448, 448), Image.BICUBIC)


def stage_loop(frames, draft):
    spec = FrameSpec(use_draft=draft)
    for data in frames:
        decode_frame(data, spec)


def arrow_column_rates(views, rounds):
    """frames/s of turning decoded views into the stage's list<PIXEL_VIEW_TYPE> column: through a
    Python bytes cell per frame (what Arrow builds from Python objects) against `view_lists`."""
    import pyarrow as pa

    rows = [[view] for view in views]
    variants = {
        "cells": lambda: pa.array([[{"height": v.shape[0], "width": v.shape[1], "pixels": v.tobytes()}] for v in views],
                                  pa.list_(PIXEL_VIEW_TYPE)),
        "view_lists": lambda: view_lists(rows),
    }
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: len(views) / statistics.median(t) for name, t in times.items()}


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    frames = jpeg_frames(args.frames, 1280, 720)
    variants = {
        "Pillow loop, full decode": lambda: pillow_loop(frames, False),
        "Pillow loop, draft": lambda: pillow_loop(frames, True),
        "decode_frame, full decode": lambda: stage_loop(frames, False),
        "decode_frame, draft": lambda: stage_loop(frames, True),
    }
    stage_loop(frames[:2], True)  # imports and first-use costs out of the timing
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    results = {name: args.frames / statistics.median(t) for name, t in times.items()}
    full = [decode_frame(f, FrameSpec(use_draft=False)) for f in frames]
    drafted = [decode_frame(f, FrameSpec(use_draft=True)) for f in frames]
    caption_psnr = statistics.mean(psnr(a.caption_view, b.caption_view) for a, b in zip(drafted, full))
    print(f"{args.frames} frames 1280x720 (mean {np.mean([len(f) for f in frames]) / 1e3:.0f} KB), one core, "
          f"median of {args.rounds} rounds")
    for name, rate in results.items():
        print(f"  {name:28} {rate:7.1f} frames/s")
    print(f"  draft / full, decode_frame: {results['decode_frame, draft'] / results['decode_frame, full decode']:.2f}x; "
          f"decode_frame draft / Pillow loop draft: {results['decode_frame, draft'] / results['Pillow loop, draft']:.2f}")
    print(f"  PSNR draft vs full: caption view {caption_psnr:.1f} dB")
    # the stage's last step per batch, on 8x these views (~100 ms a round)
    columns = arrow_column_rates([f.caption_view for f in drafted] * 8, args.rounds)
    print(f"  view column, {columns['cells']:.0f} frames/s through Python cells, {columns['view_lists']:.0f} through "
          f"view_lists: {columns['view_lists'] / columns['cells']:.2f}x")
    out = Path(__file__).parent / "results" / "frame_decode.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"frames_per_s": results, "psnr_caption_db": caption_psnr,
                               "view_column_frames_per_s": columns,
                               "args": vars(args)}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
