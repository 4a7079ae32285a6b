"""Candidate keys and the comparisons, against a brute force over every pair: banding misses no
pair within the near distance, the verdict is the first-ranked match, only judged rows get one."""

import numpy as np
import pyarrow as pa
import pytest

from etl.dedup.buckets import KEY_ROW_SCHEMA, classify, key_rows
from etl.dedup.compare import compare_groups, pick_verdicts
from etl.dedup.keys import EXACT, NEAR, SEMANTIC, KeySpec, band_edges, kind_of, near_keys, semantic_keys
from etl.transforms.hashes import hamming


def test_bands_cover_every_bit_once():
    for bands in range(1, 17):
        edges = band_edges(bands)
        assert edges[0][0] == 0 and edges[-1][1] == 64
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
        assert max(e - s for s, e in edges) - min(e - s for s, e in edges) <= 1


@pytest.mark.parametrize("distance", [0, 2, 4, 7])
def test_near_keys_find_every_pair_within_the_distance(distance):
    rng = np.random.default_rng(distance)
    base = rng.integers(-2**63, 2**63 - 1, 300, dtype=np.int64)
    flips = [rng.choice(64, size=rng.integers(0, distance + 1), replace=False) for _ in base]
    near = np.array([np.int64(np.uint64(b).view(np.uint64) ^ np.uint64(sum(1 << int(f) for f in fl))).view(np.int64)
                     if len(fl) else b for b, fl in zip(base, flips)], dtype=np.int64)
    assert (hamming(base, near) <= distance).all()
    keys_a, keys_b = near_keys(base, distance), near_keys(near, distance)
    shares = np.zeros(len(base), bool)
    for a, b in zip(keys_a, keys_b):
        shares |= a == b
        assert (kind_of(a) == NEAR).all()
    assert shares.all()


def test_semantic_keys_are_stable_and_separate_unrelated_vectors():
    spec = KeySpec()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 64))
    close = vectors + 0.05 * rng.standard_normal(vectors.shape)  # cosine ~0.999
    first, again, other = (semantic_keys(v, spec) for v in (vectors, vectors.copy(), close))
    assert all((a == b).all() for a, b in zip(first, again))
    assert np.mean(np.any([a == b for a, b in zip(first, other)], axis=0)) > 0.99
    unrelated = semantic_keys(rng.standard_normal((200, 64)), spec)
    assert np.mean(np.any([a == b for a, b in zip(first, unrelated)], axis=0)) < 0.05
    assert all((kind_of(k) == SEMANTIC).all() for k in first)


def _group(key, ids, ranks, judged, **payload):
    count = len(ids)
    columns = {"key": [key] * count, "slot": [0] * count, "sample_id": ids, "bucket": [0] * count, "run_id": ["r"] * count,
               "first_seen": [r[0] for r in ranks], "shard": [r[1] for r in ranks], "row": [r[2] for r in ranks],
               "judged": judged}
    return pa.table({name: columns.get(name, payload.get(name, [None] * count)) for name in KEY_ROW_SCHEMA.names},
                    schema=KEY_ROW_SCHEMA)


def test_exact_group_marks_judged_copies_against_the_first_ranked_copy():
    group = _group(0, ["c", "a", "b", "d"], [(2, 0, 0), (1, 5, 0), (1, 3, 9), (2, 0, 1)],
                   [True, False, False, True], pixel_key=["k", "k", "k", "other"])
    edges = compare_groups(group, KeySpec())
    assert dict(zip(edges.column("sample_id").to_pylist(), edges.column("duplicate_of").to_pylist())) == {"c": "b"}
    assert edges.column("hamming").to_pylist() == [0] and edges.column("cosine").to_pylist() == [None]


def test_a_group_without_judged_rows_gives_nothing():
    group = _group(0, ["a", "b"], [(1, 0, 0), (1, 0, 1)], [False, False], pixel_key=["k", "k"])
    assert compare_groups(group, KeySpec()).num_rows == 0


def test_near_group_matches_the_brute_force_rule():
    rng = np.random.default_rng(3)
    count, spec = 60, KeySpec(near_distance=4)
    frames = rng.integers(1, 3, count)
    base = rng.integers(-2**63, 2**63 - 1, (4, 2), dtype=np.int64)

    def flipped(value, bits):  # `bits` random bits of `value` flipped
        mask = sum(1 << int(b) for b in rng.choice(64, size=bits, replace=False))
        return int(np.array([value], np.int64).view(np.uint64)[0] ^ np.uint64(mask))

    hashes = [[int(np.array([flipped(base[i % 4, f], i % 7)], np.uint64).view(np.int64)[0]) for f in range(n)]
              for i, n in enumerate(frames)]
    ranks = [(int(rng.integers(1, 3)), int(rng.integers(0, 5)), i) for i in range(count)]
    judged = rng.random(count) < 0.6
    ids = [f"s{i}" for i in range(count)]
    edges = compare_groups(_group(1 << 62, ids, ranks, judged.tolist(), perceptual=hashes), spec)
    got = dict(zip(edges.column("sample_id").to_pylist(), edges.column("duplicate_of").to_pylist()))
    expected = {}
    for i in np.flatnonzero(judged):
        matches = [j for j in range(count) if ranks[j] < ranks[i] and len(hashes[j]) == len(hashes[i])
                   and max(hamming(np.array(hashes[i]), np.array(hashes[j]))) <= spec.near_distance]
        if matches:
            expected[ids[i]] = ids[min(matches, key=lambda j: ranks[j])]
    assert got == expected and len(expected) > 5


def test_semantic_group_matches_the_brute_force_rule():
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((3, 16))
    vectors = centres[rng.integers(0, 3, 50)] + 0.1 * rng.standard_normal((50, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ranks = [(1, 0, i) for i in range(50)]
    judged = [i % 2 == 0 for i in range(50)]
    semantic_key = int(np.array([2 << 62], np.uint64).view(np.int64)[0])
    edges = compare_groups(_group(semantic_key, [f"s{i}" for i in range(50)], ranks, judged,
                                 embedding=vectors.astype(np.float32).tolist()), KeySpec(semantic_threshold=0.99))
    got = dict(zip(edges.column("sample_id").to_pylist(), edges.column("cosine").to_pylist()))
    cosines = vectors @ vectors.T
    expected = {f"s{i}": cosines[i, min(j for j in range(i) if cosines[i, j] >= 0.99)] for i in range(0, 50, 2)
                if any(cosines[i, j] >= 0.99 for j in range(i))}
    assert got.keys() == expected.keys() and len(expected) > 3
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)


def test_the_verdict_is_the_strongest_kind_then_the_first_ranked_keeper():
    edges = pa.table({"sample_id": ["x"] * 3, "bucket": [0] * 3, "sample_run_id": ["r"] * 3,
                      "kind": pa.array([SEMANTIC, NEAR, NEAR], pa.int8()), "duplicate_of": ["a", "b", "c"],
                      "keeper_first_seen": pa.array([1, 2, 1], pa.int32()), "keeper_shard": [0, 0, 7],
                      "keeper_row": [0, 0, 0], "hamming": pa.array([None, 3, 1], pa.int32()),
                      "cosine": pa.array([0.99, None, None], pa.float32())})
    assert pick_verdicts(edges).column("duplicate_of").to_pylist() == ["c"]
    two = pa.concat_tables([edges, edges.set_column(0, "sample_id", pa.array(["y"] * 3))])
    picked = pick_verdicts(two.take([4, 0, 3, 1, 5, 2]))
    assert dict(zip(picked.column("sample_id").to_pylist(), picked.column("duplicate_of").to_pylist())) == \
        {"x": "c", "y": "c"}


def test_many_groups_in_one_call_give_what_each_group_gives_alone():
    rng = np.random.default_rng(7)
    groups = []
    for g in range(40):
        size = int(rng.integers(1, 6))
        keys = ["same" if rng.random() < 0.5 else f"k{i}" for i in range(size)]
        groups.append(_group(g, [f"g{g}s{i}" for i in range(size)], [(1, g, i) for i in range(size)],
                             (rng.random(size) < 0.7).tolist(), pixel_key=keys))
    alone = pa.concat_tables([compare_groups(t, KeySpec()) for t in groups])
    together = compare_groups(pa.concat_tables(groups).take(rng.permutation(sum(t.num_rows for t in groups))),
                              KeySpec())
    assert sorted(together.to_pylist(), key=str) == sorted(alone.to_pylist(), key=str) and alone.num_rows > 5


def test_classify_ranks_rows_by_the_pass_that_first_saw_them():
    samples = pa.table({"sample_id": ["a", "b", "c", "d"], "run_id": ["r1", "r2", "r1", "r1"]})
    seen = pa.table({"sample_id": ["a", "b", "c", "gone"], "sample_run_id": ["r1", "r1", "r1", "r1"],
                     "first_seen": pa.array([1, 1, 2, 1], pa.int32())})
    classified = classify(samples, seen, pa.table({"sample_id": ["c"]}), pass_number=3)
    rows = classified.rows
    assert rows.column("first_seen").to_pylist() == [1, 3, 2, 3]  # b re-processed, d new
    assert rows.column("judged").to_pylist() == [False, True, True, True]  # c was a duplicate
    assert (classified.new, classified.reprocessed, classified.removed) == (1, 1, 1)


def test_key_rows_carry_each_kinds_payload():
    samples = pa.table({"sample_id": ["a", "b"], "run_id": ["r", "r"], "shard": [0, 0], "row": [0, 1],
                        "first_seen": pa.array([1, 1], pa.int32()), "judged": [True, False],
                        "frame_pixel_hashes": [["00" * 16], ["11" * 16, "22" * 16]],
                        "frame_perceptual_hashes": pa.array([[5], [7, 9]], pa.list_(pa.int64())),
                        "embedding": pa.array([[1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float32()))})
    rows = key_rows(samples, 3, KeySpec(near_distance=2, semantic_bands=4))
    kinds = kind_of(rows.column("key").to_numpy())
    assert (kinds == EXACT).sum() == 2 and (kinds == NEAR).sum() == 6 and (kinds == SEMANTIC).sum() == 8
    assert rows.column("bucket").to_pylist() == [3] * 16
    near = rows.filter(pa.array(kinds == NEAR))
    assert near.column("pixel_key").null_count == 6 and near.column("perceptual").null_count == 0


@pytest.mark.parametrize("kind", ["exact", "near", "semantic"])
def test_large_groups_compared_in_chunks_give_what_small_ones_give_in_bulk(kind, monkeypatch):
    from etl.dedup import compare

    rng = np.random.default_rng(11)
    count = 90
    ranks = [(1 + i % 2, int(rng.integers(0, 4)), i) for i in range(count)]
    judged = (rng.random(count) < 0.5).tolist()
    base = rng.integers(-2**63, 2**63 - 1, 5, dtype=np.int64)
    payload = {"exact": {"pixel_key": [f"k{i % 7}" for i in range(count)]},
               "near": {"perceptual": [[int(base[i % 5] ^ (i % 3)), int(base[(i + 1) % 5])][:1 + i % 2]
                                       for i in range(count)]},
               "semantic": {"embedding": (rng.standard_normal((4, 8))[rng.integers(0, 4, count)]
                                          + 0.05 * rng.standard_normal((count, 8))).astype(np.float32).tolist()}}[kind]
    key = {"exact": 0, "near": 1 << 62, "semantic": int(np.array([2 << 62], np.uint64).view(np.int64)[0])}[kind]
    group = _group(key, [f"s{i}" for i in range(count)], ranks, judged, **payload)
    spec = KeySpec(near_distance=2, semantic_threshold=0.95)
    bulk = compare_groups(group, spec)
    monkeypatch.setattr(compare, "SMALL_GROUP", 1)
    chunked = compare_groups(group, spec)
    assert sorted(bulk.drop_columns(["cosine"]).to_pylist(), key=str) == \
        sorted(chunked.drop_columns(["cosine"]).to_pylist(), key=str) and bulk.num_rows > 10
    np.testing.assert_allclose(sorted(bulk.column("cosine").drop_null().to_pylist()),
                               sorted(chunked.column("cosine").drop_null().to_pylist()), rtol=1e-5)


def test_a_bucket_with_no_samples_left_gives_no_keys_and_counts_its_samples_gone():
    from etl.dedup.buckets import read_files

    empty = read_files([], ["sample_id", "shard", "row", "run_id", "frame_pixel_hashes", "frame_perceptual_hashes",
                            "embedding"])
    seen = pa.table({"sample_id": ["a"], "sample_run_id": ["r"], "first_seen": pa.array([1], pa.int32())})
    classified = classify(empty, seen, pa.table({"sample_id": ["a"]}), pass_number=2)
    assert classified.removed == 1 and classified.rows.num_rows == 0
    assert key_rows(classified.rows, 0, KeySpec()).num_rows == 0
