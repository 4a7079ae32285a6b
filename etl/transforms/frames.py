"""Frame decoding for the CPU stage (`etl.stages.decode`): encoded frames in, pixel views out.

Per frame: a header check against the decompression-bomb limit (no pixels decoded yet), a JPEG
DCT-scaled decode (`draft`) when the frame shrinks by 2x or more, EXIF orientation, conversion
of L/P/RGBA/CMYK/16-bit/... to RGB, the
frame's pixel and perceptual hashes (`etl.transforms.hashes`, for `jobs.dedup`), then
- the captioner view: Qwen-VL "smart resize" (sides multiples of patch x merge, pixel count
  within [min_pixels, max_pixels]), the same rule as transformers' Qwen2-VL `smart_resize`;
- the encoders' `crop_size` centre crop, only where the captioner view is too small to cut it
  from or the encoders run on CPUs (`crops_on_cpu`): otherwise the encoders cut it from that
  view on their own device
  (`etl.models.encoders.centre_crops`). A second resize here cost the CPU stage a fifth of its
  time, and the CPU stage is what keeps the GPUs fed; an upscaled crop would lose detail.

A sample whose frames cannot all be decoded is a value (`FrameError` with its reason), never an
exception that sinks the batch.
"""

import io
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from etl.transforms.hashes import perceptual_hash, pixel_hash

# Qwen3-VL's image processor: patch 16, merge 2 -> sides are multiples of 32.
QWEN3_VL_FACTOR = 32


@dataclass(frozen=True)
class FrameSpec:
    factor: int = QWEN3_VL_FACTOR
    min_pixels: int = 64 * 32 * 32      # Qwen3-VL's shortest_edge default (65536)
    max_pixels: int = 448 * 448         # bounds captioner tokens per frame: 196 at factor 32
    crop_size: int = 224
    max_image_pixels: int = 50_000_000  # a 1 MB JPEG claiming more is a decompression bomb
    use_draft: bool = True
    max_frames: int = 10  # per sample: the engine takes no more per request, the planner counts tokens for these
    # Encoders on CPUs: cut every crop here, since Pillow resizes ~2x faster than torch on a CPU
    crops_on_cpu: bool = False
    hashes: bool = True  # each frame's pixel and perceptual hashes (etl.transforms.hashes), for jobs.dedup

    def caption_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the captioner view of an upright width x height frame."""
        h, w = smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return w, h

    def crop_made_here(self, caption_size: tuple[int, int]) -> bool:
        """Whether the CPU stage makes the crop itself: the encoders run on CPUs, or the view is
        too small to cut it from without upscaling."""
        return self.crops_on_cpu or min(caption_size) < self.crop_size

    def __post_init__(self):
        if self.factor < 1 or self.crop_size < 1 or self.max_frames < 1:
            raise ValueError(f"factor, crop_size and max_frames must be positive: {self}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")


class FrameError(Exception):
    """Why a frame could not be decoded; the sample goes to quarantine with this reason."""


@dataclass
class Frame:
    caption_view: np.ndarray  # (H, W, 3) uint8, H and W multiples of spec.factor
    crop: Optional[np.ndarray]  # (crop, crop, 3) uint8; None: the encoders cut it from caption_view
    source_size: tuple[int, int]  # (width, height) as stored, before orientation
    pixel_hash: Optional[str] = None   # of the decoded, upright RGB pixels (etl.transforms.hashes)
    perceptual_hash: Optional[int] = None


_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) of the captioner view: Qwen-VL's rule, equal to transformers'
    `qwen2_vl...smart_resize` (tests/transforms check it on many sizes). Not imported from
    there: that import pulls in torch, ~8 s and ~650 MiB more per decode actor, and decode
    actors are most of a node's processes."""
    if max(height, width) / min(height, width) > 200:
        raise FrameError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _to_rgb(image):
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16-bit keeps its range."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _open(data):
    """An encoded image file, or a `pil` cell from read_mds (raw pixels + header)."""
    from PIL import Image

    if isinstance(data, dict):
        width, height = data["width"], data["height"]
        if width * height == 0:
            raise ValueError(f"empty {width}x{height} image")
        return Image.frombytes(data["mode"], (width, height), data["data"])
    return Image.open(io.BytesIO(data))


def decode_frame(data, spec: FrameSpec) -> Frame:
    """One encoded image (file bytes, or a `pil` struct) -> its views. Raises FrameError."""
    from PIL import Image, ImageOps

    try:
        image = _open(data)
    except Image.DecompressionBombError as exc:
        raise FrameError(f"decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises many types for garbage
        raise FrameError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width * height > spec.max_image_pixels:
        raise FrameError(f"image claims {width}x{height} pixels, over max_image_pixels="
                         f"{spec.max_image_pixels} (decompression bomb?)")
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        upright = (height, width) if orientation in _SWAPS_AXES else (width, height)
        caption_size = spec.caption_size(*upright)
        crop_here = spec.crop_made_here(caption_size)
        scale = spec.crop_size / min(upright) if crop_here else 0
        needed = (max(caption_size[0], round(upright[0] * scale)),
                  max(caption_size[1], round(upright[1] * scale)))
        if spec.use_draft and image.format == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 size, never below what the views need.
            request = (needed[1], needed[0]) if orientation in _SWAPS_AXES else needed
            image.draft("RGB", request)
        image.load()
        # exif_transpose copies the image even when nothing turns (~0.5 ms a 640x360 frame)
        image = _to_rgb(ImageOps.exif_transpose(image) if orientation != 1 else image)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"cannot decode ({type(exc).__name__}: {exc})") from None
    hashes = (pixel_hash(image), perceptual_hash(image)) if spec.hashes else (None, None)
    caption = np.asarray(image.resize(caption_size, Image.BICUBIC))
    if not crop_here:
        return Frame(caption, None, (width, height), *hashes)
    # Shorter side to crop_size then centre crop == resize only the centre square (`box`),
    # which filters the same pixels without resizing the parts the crop drops.
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    crop = np.asarray(image.resize((spec.crop_size, spec.crop_size), Image.BICUBIC, box=box))
    return Frame(caption, crop, (width, height), *hashes)


def decode_sample(frames: Sequence[bytes], spec: FrameSpec) -> list[Frame]:
    if not frames:
        raise FrameError("sample has no frames")
    if len(frames) > spec.max_frames:
        raise FrameError(f"{len(frames)} frames, more than frames.max_frames ({spec.max_frames})")
    decoded = []
    for i, data in enumerate(frames):
        try:
            decoded.append(decode_frame(data, spec))
        except FrameError as exc:
            raise FrameError(f"frame {i}: {exc}") from None
    return decoded


# -------------------------------------------------------------------------------------------
# Pixel views in Arrow: one cell per frame, for the captioner views and the encoders' crops alike.

PIXEL_VIEW_TYPE = pa.struct([("height", pa.int32()), ("width", pa.int32()), ("pixels", pa.large_binary())])


def pixel_bytes_per_frame(max_pixels: int, crop_size: int) -> int:
    """Upper bound of decoded bytes one frame adds to a batch: the captioner's view and, where
    the encoders cannot cut it on their device, the centre crop (3 bytes a pixel)."""
    return 3 * (max_pixels + crop_size ** 2)


def view_lists(rows: Sequence[Sequence[Optional[np.ndarray]]]) -> pa.ListArray:
    """Per row, uint8 (H, W, 3) frames (None: a null cell) -> list<PIXEL_VIEW_TYPE>. The pixels
    are copied once, into one buffer; a cell per frame through Python bytes copied them twice
    into fresh pages each time."""
    cells = [cell for row in rows for cell in row]
    present = [cell for cell in cells if cell is not None]
    pixel_offsets = np.zeros(len(cells) + 1, np.int64)
    np.cumsum([0 if cell is None else cell.size for cell in cells], out=pixel_offsets[1:])
    data = np.concatenate([cell.reshape(-1) for cell in present]) if present else np.zeros(0, np.uint8)
    pixels = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(cells),
                                              [None, pa.py_buffer(pixel_offsets), pa.py_buffer(data)])
    heights, widths = (pa.array([0 if cell is None else cell.shape[axis] for cell in cells], pa.int32())
                       for axis in (0, 1))
    nulls = pa.array([cell is None for cell in cells]) if len(present) < len(cells) else None
    views = pa.StructArray.from_arrays([heights, widths, pixels], fields=list(PIXEL_VIEW_TYPE), mask=nulls)
    row_offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(row) for row in rows], out=row_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(row_offsets), views)


def pixel_views(views: pa.StructArray) -> list[Optional[np.ndarray]]:
    """Cells of PIXEL_VIEW_TYPE -> uint8 (height, width, 3) arrays over the Arrow buffer
    (no copies); None for null cells. The inverse of `view_lists`."""
    heights, widths, pixels = views.flatten()
    offset_type = np.int64 if pa.types.is_large_binary(pixels.type) else np.int32
    offsets = np.frombuffer(pixels.buffers()[1], offset_type)[pixels.offset:pixels.offset + len(pixels) + 1]
    data = pixels.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    valid = np.asarray(views.is_valid())
    heights, widths = (side.fill_null(0).to_numpy() for side in (heights, widths))
    return [data[offsets[i]:offsets[i + 1]].reshape(heights[i], widths[i], 3) if valid[i] else None
            for i in range(len(views))]
