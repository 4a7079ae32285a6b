"""What the job reads: the frames column from the encodings, the columns it names."""

import pytest

from etl.config import load_config
from etl.job_input import choose_image_column, read_columns


def test_the_job_finds_the_frames_column_from_the_encodings():
    assert choose_image_column({"id": "int", "frames": "jpeg_array"}, None) == "frames"
    assert choose_image_column({"id": "int", "still": "pil"}, None) == "still"
    with pytest.raises(ValueError, match=r"several image columns \['a', 'b'\]: choose one with --image-column"):
        choose_image_column({"a": "jpeg", "b": "list[png]"}, None)
    assert choose_image_column({"a": "jpeg", "b": "list[png]"}, "b") == "b"
    with pytest.raises(ValueError, match=r"'id' is 'int'; image columns must be one of"):
        choose_image_column({"id": "int", "a": "jpeg"}, "id")
    with pytest.raises(ValueError, match="no image column"):
        choose_image_column({"id": "int"}, None)


def test_the_job_reads_the_columns_it_names_and_refuses_one_the_input_lacks():
    encodings = {"frames": "jpeg_array", "text": "str", "fps": "float64"}
    read = load_config("jobs/configs/local.yaml", {"input": "/in", "output": "/out", "read.text_column": "text",
                                                   "read.fps_column": "fps"}).read
    assert read_columns(read, encodings, "frames") == ["frames", "text", "fps"]
    lacking = read.model_copy(update={"frame_indices_column": "at"})
    with pytest.raises(ValueError, match=r"read.frame_indices_column='at': no such column in the input "
                                         r"\(its columns: frames, text, fps\)"):
        read_columns(lacking, encodings, "frames")

