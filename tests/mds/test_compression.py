import bz2
import gzip

import brotli
import numpy as np
import pytest
import snappy
import zstd

from etl.mds.compression import CODECS, compress, decompress_exact, parse_compression

REFERENCE = {  # the calls mosaicml-streaming makes
    "br": (lambda d: brotli.compress(d, quality=11), brotli.decompress),
    "bz2": (lambda d: bz2.compress(d, 9), bz2.decompress),
    "gz": (lambda d: gzip.compress(d, 9), gzip.decompress),
    "snappy": (snappy.compress, snappy.decompress),
    "zstd": (lambda d: zstd.compress(d, 3), zstd.decompress),
}
DATA = np.random.default_rng(0).bytes(5000) + b"abc" * 20000


@pytest.mark.parametrize("family", sorted(CODECS))
def test_each_family_interoperates_with_the_reference_codecs(family):
    ref_compress, ref_decompress = REFERENCE[family]
    assert ref_decompress(compress(family, DATA)) == DATA
    out = np.empty(len(DATA) + 1, np.uint8)
    assert decompress_exact(family, ref_compress(DATA), out) == len(DATA)
    assert out[: len(DATA)].tobytes() == DATA


@pytest.mark.parametrize("family", sorted(CODECS))
def test_output_past_the_buffer_is_reported_not_written(family):
    out = np.empty(1001, np.uint8)
    assert decompress_exact(family, compress(family, DATA), out) == len(out)


def test_levels_and_names_are_validated_with_the_allowed_values():
    assert parse_compression("zstd:7")[1] == 7
    assert parse_compression("br")[1] == 11
    with pytest.raises(ValueError, match=r"allowed families: \['br', 'bz2', 'gz', 'snappy', 'zstd'\]"):
        parse_compression("lz4")
    with pytest.raises(ValueError, match=r"zstd levels are 1-22"):
        parse_compression("zstd:0")
    with pytest.raises(ValueError, match=r"snappy takes no level"):
        parse_compression("snappy:1")


def test_corrupt_input_is_a_clear_error():
    with pytest.raises(ValueError, match="not valid gz data"):
        decompress_exact("gz", b"not gzip at all", np.empty(10, np.uint8))
