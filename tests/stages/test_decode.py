"""The decode stage: pixel views per frame, failures as `error` values, contact-sheet previews."""

import io

import pyarrow as pa
from PIL import Image

from etl.config import load_config
from etl.stages import rows
from etl.stages.decode import DecodeStage, frame_spec
from etl.stages.previews import PreviewRows
from etl.synthetic import jpeg_frames
from etl.transforms.frames import FrameSpec

SPEC = FrameSpec(max_pixels=224 * 224, min_pixels=32 * 32, crop_size=64)
DECODED = (rows.CAPTION_FRAMES, rows.CROP_FRAMES, rows.FRAME_COUNT, rows.FRAME_SIZES, rows.PREVIEW)


def _stage(spec=SPEC, previews=PreviewRows()):
    return DecodeStage(spec, previews, image_column="frames", error_column="error")


def _with_provenance(table: pa.Table) -> pa.Table:
    count = table.num_rows
    return table.append_column("shard", pa.array([0] * count, pa.int64())).append_column(
        "row", pa.array(range(count), pa.int64()))


def test_stage_adds_views_and_turns_failures_into_error_values():
    good = jpeg_frames(2, 320, 180)
    batch = _with_provenance(pa.table({
        "id": [0, 1, 2, 3],
        "frames": pa.array([good, [good[0], b"junk"], good[:1], good], pa.list_(pa.large_binary())),
        "error": pa.array([None, None, None, "column 'frames': upstream problem"], pa.string()),
    }))
    out = _stage()(batch)
    assert out.column("error").to_pylist()[1].startswith("decode: frame 1: not a decodable image")
    assert out.column("error").to_pylist()[3] == "column 'frames': upstream problem"  # untouched
    assert out.column("frame_count").to_pylist() == [2, 0, 1, 0]
    # the types the row contract declares
    assert {name: out.schema.field(name).type for name in DECODED} == {name: rows.TYPES[name] for name in DECODED}
    assert "frames" not in out.schema.names and rows.done_at("decode") in out.schema.names
    crops = out.column("crop_frames").to_pylist()
    assert [len(row) for row in crops] == [2, 0, 1, 0]
    # 320x180 under max_pixels 224 x 224: a 288x160 view, too small for 192 px crops but not for 64
    large = _stage(FrameSpec(max_pixels=224 * 224, min_pixels=32 * 32, crop_size=192))(batch)
    made = [c for row in large.column("crop_frames").to_pylist() for c in row]
    assert [(c["height"], c["width"], len(c["pixels"])) for c in made] == [(192, 192, 192 * 192 * 3)] * 3
    assert crops[0] == [None, None]
    view = out.column("caption_frames")[0].as_py()[0]
    assert len(view["pixels"]) == view["height"] * view["width"] * 3
    assert out.column("frame_sizes").to_pylist()[0] == [[320, 180], [320, 180]]
    pixel_hashes, perceptual_hashes = (out.column(name).to_pylist() for name in
                                       ("frame_pixel_hashes", "frame_perceptual_hashes"))
    assert [len(h) for h in pixel_hashes] == out.column("frame_count").to_pylist()
    assert [len(h) for h in perceptual_hashes] == out.column("frame_count").to_pylist()
    assert all(len(h) == 32 for row in pixel_hashes for h in row)


def test_pil_cells_from_read_mds_decode_in_the_stage():
    image = Image.new("RGBA", (96, 64), (10, 200, 30, 255))
    cell = {"width": image.width, "height": image.height, "mode": image.mode, "data": image.tobytes()}
    out = _stage()(_with_provenance(pa.table({"frames": pa.array([[cell, cell]]),
                                              "error": pa.array([None], pa.string())})))
    assert out.column("frame_count").to_pylist() == [2] and out.column("error").to_pylist() == [None]


def test_the_decode_stage_previews_exactly_the_chosen_good_rows():
    frame = jpeg_frames(1, 96, 64)[0]
    cells = [(0, 0, None), (0, 1, None), (0, 2, None), (1, 0, None), (2, 0, None), (2, 1, "read: bad")]
    batch = pa.table({"shard": pa.array([r[0] for r in cells], pa.int64()),
                      "row": pa.array([r[1] for r in cells], pa.int64()),
                      rows.ERROR: pa.array([r[2] for r in cells], pa.string()), rows.FRAMES: [[frame]] * len(cells)})
    out = DecodeStage(FrameSpec(min_pixels=32 * 32, max_pixels=64 * 64, crop_size=32), PreviewRows((0, 2), 2))(batch)
    previews = out.column(rows.PREVIEW).to_pylist()
    assert [p is not None for p in previews] == [True, True, False, False, True, False]
    assert max(Image.open(io.BytesIO(previews[0])).size) <= 160


def test_the_cpu_stage_makes_the_crops_when_the_encoders_get_no_gpu():
    config = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out", "frames.crop_size": 64,
                                                     "frames.min_pixels": 32 * 32, "frames.max_pixels": 128 * 128})
    on_gpu, on_cpu = frame_spec(config, encoders_on_gpu=True), frame_spec(config, encoders_on_gpu=False)
    view = on_gpu.caption_size(1280, 720)
    assert min(view) >= 64  # large enough to cut the 64 px crop from
    assert not on_gpu.crop_made_here(view) and on_cpu.crop_made_here(view)
    assert on_gpu.crop_made_here((32, 32))  # too small: made here wherever the encoders run


def test_the_cpu_stage_does_not_import_torch():
    import subprocess
    import sys

    # torch costs a decode actor ~8 s and ~650 MiB, and decode actors are most of a node's processes
    code = ("import sys; from etl.transforms.frames import FrameSpec; from etl.stages.previews import PreviewRows; "
            "from etl.stages.decode import DecodeStage; DecodeStage(FrameSpec(), PreviewRows()); "
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_batch_of_only_failed_rows_keeps_its_rows_and_reasons():
    batch = _with_provenance(pa.table({"frames": pa.array([[b"x"], [b"y"]], pa.list_(pa.large_binary())),
                                       "error": pa.array(["read: a", "read: b"], pa.string())}))
    out = _stage()(batch)
    assert out.num_rows == 2 and out.column("error").to_pylist() == ["read: a", "read: b"]
    assert out.column("frame_count").to_pylist() == [0, 0] and out.column(rows.PREVIEW).null_count == 2
