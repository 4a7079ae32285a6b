"""The comparisons of `jobs.dedup`: within one candidate group, and then per sample.

A sample is a duplicate when a sample ranked before it matches it; it is marked a duplicate of
the first-ranked such sample. The rank is (first_seen, shard, row): the dedup pass that first
saw the sample, then its place in the input, so a copy already in the tables is never displaced
by one that arrives later, and the rule needs no state beyond first_seen. Only "judged" samples
(new ones, re-processed ones and earlier duplicates, `etl.dedup.pass_plan`) are compared, each
against every member ranked before it; the verdict of any other sample cannot change, since
everything judged ranks after it or was judged before.

- exact: the same pixel key (the same decoded pixels in every frame, in order);
- near: as many frames, each frame's pHash at most `near_distance` bits from its counterpart;
- semantic: cosine of the pooled embeddings at least `semantic_threshold`.

Matching is not transitive for near and semantic (A~B and B~C without A~C); "a duplicate of the
first-ranked match" keeps the first of any chain, as semantic dedup usually does.
"""

import numpy as np
import pyarrow as pa

from etl.dedup.keys import EXACT, NEAR, SEMANTIC, KeySpec, kind_of

CHUNK_ROWS = 512  # judged rows compared at once: bounds a group's distance matrix

EDGE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("bucket", pa.int32()), ("sample_run_id", pa.string()),
    ("kind", pa.int8()), ("duplicate_of", pa.string()),
    ("keeper_first_seen", pa.int32()), ("keeper_shard", pa.int64()), ("keeper_row", pa.int64()),
    ("hamming", pa.int32()), ("cosine", pa.float32()),
])


def _ranked(group: pa.Table) -> pa.Table:
    order = np.lexsort([group.column(name).to_numpy() for name in ("row", "shard", "first_seen")])
    return group.take(order)


def _first_match(matches: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Per judged row (matches: (chunk, n) booleans), the first earlier-ranked member that
    matches it, or -1."""
    earlier = np.arange(matches.shape[1])[None, :] < positions[:, None]
    hits = matches & earlier
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def _exact(ranked: pa.Table, judged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first: dict[str, int] = {}
    keepers = np.full(len(judged), -1)
    for i, key in enumerate(ranked.column("pixel_key").to_pylist()):
        if key in first and judged[i]:
            keepers[i] = first[key]
        first.setdefault(key, i)
    return keepers, np.zeros(len(judged))


def _near(ranked: pa.Table, judged: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames compared in order; samples with other frame counts never match."""
    column = ranked.column("perceptual").combine_chunks()
    counts = np.diff(np.asarray(column.offsets))
    keepers, distances = np.full(len(judged), -1), np.zeros(len(judged))
    for count in np.unique(counts):
        members = np.flatnonzero(counts == count)
        hashes = np.stack([np.asarray(column[int(i)].values, np.int64) for i in members]).view(np.uint64)
        for start in range(0, len(members), CHUNK_ROWS):
            chunk = np.arange(start, min(start + CHUNK_ROWS, len(members)))
            chunk = chunk[judged[members[chunk]]]
            if not len(chunk):
                continue
            bits = np.bitwise_count(hashes[chunk][:, None, :] ^ hashes[None, :, :]).max(axis=2)
            best = _first_match(bits <= distance, chunk)
            found = best >= 0
            keepers[members[chunk[found]]] = members[best[found]]
            distances[members[chunk[found]]] = bits[found, best[found]]
    return keepers, distances


def _semantic(ranked: pa.Table, judged: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    column = ranked.column("embedding").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    keepers, similarities = np.full(len(judged), -1), np.zeros(len(judged))
    todo = np.flatnonzero(judged)
    for start in range(0, len(todo), CHUNK_ROWS):
        chunk = todo[start:start + CHUNK_ROWS]
        cosines = vectors[chunk] @ vectors[:chunk.max() + 1].T
        best = _first_match(cosines >= threshold, chunk)
        found = best >= 0
        keepers[chunk[found]] = best[found]
        similarities[chunk[found]] = cosines[found, best[found]]
    return keepers, similarities


def compare_group(group: pa.Table, spec: KeySpec) -> pa.Table:
    """One candidate group (the key rows sharing a key) -> an edge per judged member that an
    earlier-ranked member matches, to its first-ranked match."""
    if group.num_rows < 2 or not pa.compute.any(group.column("judged")).as_py():
        return EDGE_SCHEMA.empty_table()
    kind = int(kind_of(group.column("key")[0].as_py()))
    ranked = _ranked(group)
    judged = ranked.column("judged").to_numpy(zero_copy_only=False)
    if kind == EXACT:
        keepers, measure = _exact(ranked, judged)
    elif kind == NEAR:
        keepers, measure = _near(ranked, judged, spec.near_distance)
    else:
        keepers, measure = _semantic(ranked, judged, spec.semantic_threshold)
    found = np.flatnonzero(keepers >= 0)
    kept = keepers[found]

    def column(name):
        return ranked.column(name).take(pa.array(kept))

    def judged_column(name):
        return ranked.column(name).take(pa.array(found))

    return pa.table({
        "sample_id": judged_column("sample_id"), "bucket": judged_column("bucket"),
        "sample_run_id": judged_column("run_id"), "kind": pa.array(np.full(len(found), kind, np.int8)),
        "duplicate_of": column("sample_id"), "keeper_first_seen": column("first_seen"),
        "keeper_shard": column("shard"), "keeper_row": column("row"),
        "hamming": pa.array(measure[found].astype(np.int32), mask=np.full(len(found), kind == SEMANTIC)),
        "cosine": pa.array(measure[found].astype(np.float32), mask=np.full(len(found), kind != SEMANTIC)),
    }, schema=EDGE_SCHEMA)


def pick_verdict(edges: pa.Table) -> pa.Table:
    """One sample's edges -> its verdict: the strongest kind (exact, then near, then semantic),
    then the first-ranked keeper of that kind."""
    order = np.lexsort([edges.column(name).to_numpy(zero_copy_only=False)
                        for name in ("keeper_row", "keeper_shard", "keeper_first_seen", "kind")])
    return edges.take(order[:1])
