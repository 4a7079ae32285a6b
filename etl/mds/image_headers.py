"""Image dimensions from file headers, without decoding pixels: the guard against decompression
bombs (a small file that claims a huge image). PNG reads the fixed IHDR position for a whole
column at once; JPEG walks the markers to the first SOF segment, per image, over a few bytes."""

import numpy as np
import pyarrow as pa

from etl.mds.segments import binary_parts

_PNG_SIGNATURE = np.frombuffer(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", np.uint8)
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_sizes(u8: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    ok = lengths >= 24
    at = np.where(ok, starts, 0)[:, None]
    head = u8[np.minimum(at + np.arange(24), max(len(u8) - 1, 0))] if len(u8) else np.zeros((len(starts), 24), np.uint8)
    ok &= (head[:, :16] == _PNG_SIGNATURE).all(axis=1)
    big_endian = head[:, 16:24].astype(np.int64)
    width = (big_endian[:, 0] << 24) | (big_endian[:, 1] << 16) | (big_endian[:, 2] << 8) | big_endian[:, 3]
    height = (big_endian[:, 4] << 24) | (big_endian[:, 5] << 16) | (big_endian[:, 6] << 8) | big_endian[:, 7]
    return width, height, ok


def _jpeg_size(data: memoryview):
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = (data[at + 2] << 8) | data[at + 3]
        if marker in _JPEG_SOF:
            if at + 9 > len(data):
                return None
            height = (data[at + 5] << 8) | data[at + 6]
            width = (data[at + 7] << 8) | data[at + 8]
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        at += 2 + length
    return None


def image_sizes(images: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(width, height, readable) per element of a binary array of PNG or JPEG files."""
    offsets, data = binary_parts(images)
    u8 = np.frombuffer(data, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    width, height, readable = _png_sizes(u8, starts, lengths)
    view = memoryview(u8)
    for i in np.flatnonzero(~readable):  # not PNG: try JPEG
        size = _jpeg_size(view[starts[i]: starts[i] + lengths[i]])
        if size is not None:
            width[i], height[i] = size
            readable[i] = True
    width[~readable] = height[~readable] = 0
    return width, height, readable


def image_limit_problems(column: pa.Array, max_pixels: int) -> list[tuple[np.ndarray, str]]:
    """Rows of a column of image files (or lists of them) whose header is unreadable, or claims
    more than `max_pixels` pixels, with a message naming the first offender."""
    import pyarrow.compute as pc

    rows = len(column)
    if pa.types.is_list(column.type):
        values, owner = column.flatten(), np.asarray(pc.list_parent_indices(column))
    else:
        values, owner = column, np.arange(rows)
    width, height, readable = image_sizes(values)
    problems = []
    unreadable = np.zeros(rows, bool)
    unreadable[owner[~readable]] = True
    if unreadable.any():
        problems.append((unreadable, "no readable PNG or JPEG header"))
    too_big = readable & (width * height > max_pixels)
    if too_big.any():
        first = int(np.flatnonzero(too_big)[0])
        over = np.zeros(rows, bool)
        over[owner[too_big]] = True
        problems.append((over, f"image claims {int(width[first])}x{int(height[first])} pixels, over "
                               f"max_image_pixels={max_pixels} (decompression bomb?)"))
    return problems
