"""The comparisons of `jobs.dedup`: within candidate groups, and then per sample.

A sample is a duplicate when a sample ranked before it matches it; it is marked a duplicate of
the first-ranked such sample. The rank is (first_seen, shard, row): the dedup pass that first
saw the sample, then its place in the input, so a copy already in the tables is never displaced
by one that arrives later, and the rule needs no state beyond first_seen. Only "judged" samples
(new ones, re-processed ones and earlier duplicates, `etl.dedup.buckets`) are compared, each
against every member of its group ranked before it; the verdict of any other sample cannot
change, since everything judged ranks after it or was judged before.

- exact: the same pixel key (the same decoded pixels in every frame, in order);
- near: as many frames, each frame's pHash at most `near_distance` bits from its counterpart;
- semantic: cosine of the pooled embeddings at least `semantic_threshold`.

Matching is not transitive for near and semantic (A~B and B~C without A~C); "a duplicate of the
first-ranked match" keeps the first of any chain, as semantic dedup usually does.

The shuffle delivers a slot of many groups at once (`SLOTS`): one Python call per group cost
~0.3 ms, and most groups are single rows or hold no judged row, which numpy skips in bulk.
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.dedup.keys import EXACT, NEAR, SEMANTIC, KeySpec, kind_of

CHUNK_ROWS = 512  # judged rows compared at once: bounds a group's distance matrix
SLOTS = 4096      # key rows are shuffled by key % SLOTS: each call takes every group of a slot

EDGE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("bucket", pa.int32()), ("sample_run_id", pa.string()),
    ("kind", pa.int8()), ("duplicate_of", pa.string()),
    ("keeper_first_seen", pa.int32()), ("keeper_shard", pa.int64()), ("keeper_row", pa.int64()),
    ("hamming", pa.int32()), ("cosine", pa.float32()),
])


@dataclass
class _Slot:
    """A slot's key rows in rank order within each key, as numpy arrays."""

    table: pa.Table          # taken in that order
    keys: np.ndarray
    judged: np.ndarray
    pixel: list              # pixel keys (exact rows), else None
    perceptual: pa.ListArray  # frames' pHashes (near rows)
    embeddings: pa.ListArray  # pooled embeddings (semantic rows)


def _slot(table: pa.Table) -> _Slot:
    order = np.lexsort([table.column(name).to_numpy() for name in ("row", "shard", "first_seen", "key")])
    ordered = table.take(pa.array(order))
    return _Slot(ordered, ordered.column("key").to_numpy(), ordered.column("judged").to_numpy(zero_copy_only=False),
                 ordered.column("pixel_key").to_pylist(), ordered.column("perceptual").combine_chunks(),
                 ordered.column("embedding").combine_chunks())


def _groups_to_compare(slot: _Slot) -> list[tuple[int, int]]:
    """(start, stop) of every group of 2 or more rows with a judged one."""
    starts = np.flatnonzero(np.concatenate([[True], slot.keys[1:] != slot.keys[:-1]]))
    stops = np.append(starts[1:], len(slot.keys))
    judged = np.add.reduceat(slot.judged.astype(np.int64), starts) if len(starts) else np.zeros(0)
    wanted = (stops - starts >= 2) & (judged > 0)
    return list(zip(starts[wanted].tolist(), stops[wanted].tolist()))


def _first_match(matches: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Per judged row (matches: (chunk, n) booleans), the first earlier-ranked member that
    matches it, or -1."""
    earlier = np.arange(matches.shape[1])[None, :] < positions[:, None]
    hits = matches & earlier
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def _exact(slot: _Slot, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    first: dict[str, int] = {}
    keepers = np.full(stop - start, -1)
    for i in range(stop - start):
        key = slot.pixel[start + i]
        if key in first and slot.judged[start + i]:
            keepers[i] = first[key]
        first.setdefault(key, i)
    return keepers, np.zeros(stop - start)


def _near(slot: _Slot, start: int, stop: int, distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames compared in order; samples with other frame counts never match."""
    column = slot.perceptual.slice(start, stop - start)
    offsets = np.asarray(column.offsets)
    values = column.values.to_numpy()[offsets[0]:offsets[-1]].view(np.uint64)
    counts = np.diff(offsets)
    judged = slot.judged[start:stop]
    keepers, distances = np.full(len(counts), -1), np.zeros(len(counts))
    for count in np.unique(counts):
        members = np.flatnonzero(counts == count)
        hashes = np.stack([values[offsets[i] - offsets[0]:offsets[i + 1] - offsets[0]] for i in members])
        for begin in range(0, len(members), CHUNK_ROWS):
            chunk = np.arange(begin, min(begin + CHUNK_ROWS, len(members)))
            chunk = chunk[judged[members[chunk]]]
            if not len(chunk):
                continue
            bits = np.bitwise_count(hashes[chunk][:, None, :] ^ hashes[None, :, :]).max(axis=2)
            best = _first_match(bits <= distance, chunk)
            found = best >= 0
            keepers[members[chunk[found]]] = members[best[found]]
            distances[members[chunk[found]]] = bits[found, best[found]]
    return keepers, distances


def _semantic(slot: _Slot, start: int, stop: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    column = slot.embeddings.slice(start, stop - start)
    offsets = np.asarray(column.offsets)
    vectors = column.values.to_numpy()[offsets[0]:offsets[-1]].reshape(stop - start, -1).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    keepers, similarities = np.full(stop - start, -1), np.zeros(stop - start)
    todo = np.flatnonzero(slot.judged[start:stop])
    for begin in range(0, len(todo), CHUNK_ROWS):
        chunk = todo[begin:begin + CHUNK_ROWS]
        cosines = vectors[chunk] @ vectors[:chunk.max() + 1].T
        best = _first_match(cosines >= threshold, chunk)
        found = best >= 0
        keepers[chunk[found]] = best[found]
        similarities[chunk[found]] = cosines[found, best[found]]
    return keepers, similarities


def _compare(slot: _Slot, start: int, stop: int, spec: KeySpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(judged rows matched, their keepers, the measure, kind), as positions in the slot."""
    kind = int(kind_of(slot.keys[start]))
    if kind == EXACT:
        keepers, measure = _exact(slot, start, stop)
    elif kind == NEAR:
        keepers, measure = _near(slot, start, stop, spec.near_distance)
    else:
        keepers, measure = _semantic(slot, start, stop, spec.semantic_threshold)
    found = np.flatnonzero(keepers >= 0)
    return start + found, start + keepers[found], measure[found], kind


def _pairs(groups: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every (earlier, later) pair of rows within each group, as slot positions."""
    earlier, later = [], []
    sizes = np.array([stop - start for start, stop in groups])
    starts = np.array([start for start, _ in groups])
    for size in np.unique(sizes):
        a, b = np.triu_indices(int(size), k=1)
        offsets = starts[sizes == size][:, None]
        earlier.append((offsets + a[None, :]).reshape(-1))
        later.append((offsets + b[None, :]).reshape(-1))
    return np.concatenate(earlier), np.concatenate(later)


def _dense_hashes(slot: _Slot) -> tuple[np.ndarray, np.ndarray]:
    """(frames' pHashes as rows padded with 0, frame counts) of the slot's rows."""
    offsets = np.asarray(slot.perceptual.offsets)
    counts = np.diff(offsets)
    dense = np.zeros((len(counts), max(1, int(counts.max(initial=0)))), np.uint64)
    values = slot.perceptual.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].view(np.uint64)
    rows = np.repeat(np.arange(len(counts)), counts)
    dense[rows, np.arange(len(values)) - np.repeat(offsets[:-1] - offsets[0], counts)] = values
    return dense, counts


def _dense_embeddings(column: pa.ListArray) -> np.ndarray:
    """(rows, width) unit vectors; zeros for rows without one (other kinds' key rows). The
    present rows' values are contiguous: a null list holds no values."""
    offsets = np.asarray(column.offsets)
    lengths = np.diff(offsets)
    width = int(lengths.max(initial=1)) or 1
    present = lengths > 0
    vectors = np.zeros((len(lengths), width), np.float32)
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    vectors[present] = values.reshape(-1, width)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def _small_groups(slot: _Slot, groups: list[tuple[int, int]], spec: KeySpec) -> list[tuple]:
    """`_compare` for many small groups of one kind at once: every pair measured in bulk."""
    earlier, later = _pairs(groups)
    keep = slot.judged[later]
    earlier, later = earlier[keep], later[keep]
    kind = int(kind_of(slot.keys[groups[0][0]]))
    if kind == EXACT:
        codes = pc.dictionary_encode(pa.array(slot.pixel, pa.string())).indices.fill_null(-1).to_numpy()
        measure = np.zeros(len(earlier))
        match = codes[earlier] == codes[later]
    elif kind == NEAR:
        dense, counts = _dense_hashes(slot)
        measure = np.bitwise_count(dense[earlier] ^ dense[later]).max(axis=1).astype(np.float64)
        match = (counts[earlier] == counts[later]) & (measure <= spec.near_distance)
    else:
        vectors = _dense_embeddings(slot.embeddings)
        measure = np.einsum("ij,ij->i", vectors[earlier], vectors[later]).astype(np.float64)
        match = measure >= spec.semantic_threshold
    earlier, later, measure = earlier[match], later[match], measure[match]
    order = np.lexsort((earlier, later))  # per later row, its first-ranked match first
    earlier, later, measure = earlier[order], later[order], measure[order]
    first = np.concatenate([[True], later[1:] != later[:-1]]) if len(later) else np.zeros(0, bool)
    return [(later[first], earlier[first], measure[first], kind)]


SMALL_GROUP = 64  # groups up to this size are compared pair by pair in bulk, larger ones in chunks


def compare_groups(table: pa.Table, spec: KeySpec) -> pa.Table:
    """Key rows (any number of groups: rows sharing a key) -> an edge per judged row that an
    earlier-ranked row of its group matches, to its first-ranked match."""
    if table.num_rows < 2 or not pc.any(table.column("judged")).as_py():
        return EDGE_SCHEMA.empty_table()
    slot = _slot(table)
    groups = _groups_to_compare(slot)
    parts = [_compare(slot, start, stop, spec) for start, stop in groups if stop - start > SMALL_GROUP]
    kinds = kind_of(slot.keys[[start for start, _ in groups]]) if groups else np.zeros(0, np.int8)
    for kind in (EXACT, NEAR, SEMANTIC):
        small = [group for group, of in zip(groups, kinds) if of == kind and group[1] - group[0] <= SMALL_GROUP]
        if small:
            parts += _small_groups(slot, small, spec)
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return EDGE_SCHEMA.empty_table()
    rows = pa.array(np.concatenate([p[0] for p in parts]))
    keepers = pa.array(np.concatenate([p[1] for p in parts]))
    measure = np.concatenate([p[2] for p in parts])
    kinds = np.concatenate([np.full(len(p[0]), p[3], np.int8) for p in parts])
    semantic = kinds == SEMANTIC
    ordered = slot.table
    return pa.table({
        "sample_id": ordered.column("sample_id").take(rows), "bucket": ordered.column("bucket").take(rows),
        "sample_run_id": ordered.column("run_id").take(rows), "kind": pa.array(kinds),
        "duplicate_of": ordered.column("sample_id").take(keepers),
        "keeper_first_seen": ordered.column("first_seen").take(keepers),
        "keeper_shard": ordered.column("shard").take(keepers), "keeper_row": ordered.column("row").take(keepers),
        "hamming": pa.array(measure.astype(np.int32), mask=semantic),
        "cosine": pa.array(measure.astype(np.float32), mask=~semantic),
    }, schema=EDGE_SCHEMA)


def pick_verdicts(edges: pa.Table) -> pa.Table:
    """Edges of any number of samples -> one verdict per sample: the strongest kind (exact, then
    near, then semantic), then the first-ranked keeper of that kind."""
    if not edges.num_rows:
        return edges
    order = np.lexsort([edges.column(name).to_numpy(zero_copy_only=False) for name in
                        ("keeper_row", "keeper_shard", "keeper_first_seen", "kind")] + [
        pc.rank(edges.column("sample_id"), sort_keys="ascending", tiebreaker="dense").to_numpy()])
    ordered = edges.take(pa.array(order))
    ids = ordered.column("sample_id").to_numpy(zero_copy_only=False)
    first = np.concatenate([[True], ids[1:] != ids[:-1]])
    return ordered.filter(pa.array(first))
