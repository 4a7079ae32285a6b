"""GPU encoders alone: frames/s of the embedder + VAE (`FrameEncoders`) per batch size, and the
share of the run the GPU was busy (NVML), on whatever device this machine has.

    python benchmarks/bench_encoders.py [--embedder PATH --vae PATH] [--frames 512] [--side 224]
        [--view 256x448] [--batch-sizes 16,32,64,128]

Two inputs per batch size, side by side: "views" is what the pipeline sends (captioner views of
--view pixels, the side x side centre crop cut on the device: `encode_views`), "crops" is the
same frames already cropped on the host, so the difference is what cropping on the device costs.

Without model paths it builds the tiny random-weight checkpoints (the same classes as
production): numbers then measure the plumbing (upload, normalisation, copies back), not the
models. On a GPU machine pass real checkpoints (e.g. SigLIP-so400m and the SD VAE).
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl.models.encoders import FrameEncoders, centre_crops  # noqa: E402


class GpuBusy:
    """Samples NVML's utilisation every 50 ms while running (None without an NVIDIA GPU)."""

    def __init__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:
            self._handle = None
        self.samples: list[int] = []

    def __enter__(self):
        self._stop = threading.Event()
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        if self._handle is not None:
            self._thread.join()

    @property
    def percent(self):
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedder")
    parser.add_argument("--vae")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--view", default="256x448", help="HxW of the captioner views")
    parser.add_argument("--batch-sizes", default="16,32,64,128")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoders.json"))
    args = parser.parse_args()

    embedder, vae = args.embedder, args.vae
    if not (embedder and vae):
        from etl.models.tiny import ensure_tiny_models

        tiny = ensure_tiny_models(Path(tempfile.mkdtemp()) / "tiny")
        embedder, vae = str(tiny["clip"]), str(tiny["vae"])
    height, width = (int(v) for v in args.view.split("x"))
    views = np.random.default_rng(0).integers(0, 256, (args.frames, height, width, 3), dtype=np.uint8)
    import torch

    # the same crops made on the host, as the CPU stage sends them where it cuts them itself
    crops = centre_crops(list(torch.from_numpy(views)), args.side).permute(0, 2, 3, 1).contiguous().numpy()
    inputs = {"views": lambda encoders, chunk: encoders.encode_views(list(views[chunk]), args.side),
              "crops": lambda encoders, chunk: encoders(crops[chunk])}
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        encoders = FrameEncoders(embedder, vae, embedder_batch_size=batch, vae_batch_size=batch)
        for name, run in inputs.items():
            run(encoders, slice(0, batch))  # warm-up
            with GpuBusy() as busy:
                started = time.perf_counter()
                for start in range(0, len(views), batch * 4):  # the stage's batches hold several model batches
                    run(encoders, slice(start, start + batch * 4))
                seconds = time.perf_counter() - started
            rows.append({"batch": batch, "input": name, "device": encoders.device,
                         "frames_per_s": round(len(views) / seconds, 1), "gpu_busy_percent": busy.percent})
    print(f"{'batch':>6} {'input':>6} {'device':>8} {'frames/s':>10} {'GPU busy %':>11}")
    for row in rows:
        print(f"{row['batch']:>6} {row['input']:>6} {row['device']:>8} {row['frames_per_s']:>10} "
              f"{str(row['gpu_busy_percent']):>11}")
    Path(args.out).write_text(json.dumps({"frames": args.frames, "side": args.side, "view": [height, width],
                                          "embedder": embedder, "vae": vae, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
