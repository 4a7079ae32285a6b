"""One dedup pass over a curation output, on Ray Data, hash-partitioned end to end:

    per bucket (no shuffle): samples + dedup_seen + duplicates -> classified rows -> key rows
      ==> groupby(key slot): compare within each candidate group of the slot -> edges
      ==> groupby(bucket): each judged sample's verdict -> duplicates files (workers)
    per bucket: the ledger rows -> dedup_seen files (workers)
    driver: `duplicates` replaced, then `dedup_seen` (the ledger last), each in one commit

The `samples` table is read at one version (the latest, resolved once). A pass with other
settings than the last one (`dedup:` in the config) judges every sample again. A pass replaces both
dedup tables in commits that land only on the versions it read (`overwrite_files`): two passes
at once cannot both commit, the second fails by name and is simply run again. A pass that dies
before its ledger commit is redone in full by the next one.
"""

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import storage
from etl.config import DedupConfig
from etl.dedup.buckets import BucketFiles, key_columns, key_rows, read_bucket
from etl.dedup.compare import SLOTS, compare_groups, pick_verdicts
from etl.dedup.keys import KINDS, KeySpec

logger = logging.getLogger(__name__)

SAMPLES, DUPLICATES, SEEN = "samples", "duplicates", "dedup_seen"
SHUFFLE_INPUT_BYTES = 64 << 20
JUDGED_SHARE_TO_FILTER = 0.5  # with more judged rows than this, every row's keys are shuffled
PASS_KEY, CONFIG_KEY = "dedup_pass", "dedup_config"  # commit metadata of dedup_seen: the pass number, its settings


@dataclass
class DedupSummary:
    dedup_run_id: str
    output: str
    samples_version: int = -1
    pass_number: int = 0
    samples: int = 0
    new: int = 0
    reprocessed: int = 0
    removed: int = 0
    judged: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)   # kind -> rows
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)     # seconds: verdicts, ledger, commits

    def line(self) -> str:
        found = ", ".join(f"{count} {kind}" for kind, count in self.duplicates.items()) or "none"
        return (f"dedup pass {self.pass_number} over samples v{self.samples_version}: {self.samples} samples "
                f"({self.new} new, {self.reprocessed} re-processed, {self.removed} gone), {self.judged} compared; "
                f"duplicates: {found}; {self.seconds:.1f}s")


def spec_of(config: DedupConfig) -> KeySpec:
    kinds = set(config.kinds)
    return KeySpec("exact" in kinds, config.near_distance if "near" in kinds else None,
                   config.semantic_threshold if "semantic" in kinds else None, config.semantic_bands,
                   config.semantic_bits)


def _files_by_bucket(table, uri: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if table is None:
        return found
    for action in pa.table(table.get_add_actions(flatten=True)).to_pylist():
        found.setdefault(int(action["partition.bucket"]), []).append(storage.join(uri, action["path"]))
    return found


def _last_pass(seen_table) -> tuple[int, Optional[str]]:
    """(the last pass's number, its settings as JSON); (0, None) before the first."""
    if seen_table is None:
        return 0, None
    for entry in seen_table.history(50):  # newest first; a vacuum's commits carry no pass number
        if PASS_KEY in entry:
            return int(entry[PASS_KEY]), entry.get(CONFIG_KEY)
    raise ValueError(f"{SEEN}: none of its last commits has {PASS_KEY}; was it written by jobs.dedup?")


def _bucket_keys(batch: dict, spec: KeySpec, pass_number: int, judge_all: bool, wanted=None) -> pa.Table:
    """Ray task: one bucket's files -> its key rows; with `wanted` (an object ref to the keys
    judged rows have), only the rows that can meet a judged row."""
    files = BucketFiles(**json.loads(batch["files"][0]))
    classified = read_bucket(files, key_columns(spec), pass_number, judge_all)
    rows = key_rows(classified.rows, files.bucket, spec)
    if wanted is None:
        return rows
    import ray

    return rows.filter(pc.or_(rows.column("judged"), pc.is_in(rows.column("key"), value_set=ray.get(wanted))))


def _bucket_judged_keys(batch: dict, spec: KeySpec, pass_number: int) -> dict:
    """Ray task: the keys of one bucket's judged rows (and how many rows it has, judged or not)."""
    files = BucketFiles(**json.loads(batch["files"][0]))
    classified = read_bucket(files, key_columns(spec), pass_number, False)
    judged = classified.rows.filter(classified.rows.column("judged"))
    keys = np.unique(key_rows(judged, files.bucket, spec).column("key").to_numpy())
    return {"keys": [keys.tobytes()], "rows": [classified.rows.num_rows], "judged": [judged.num_rows]}


def _wanted_keys(items: list[dict], spec: KeySpec, pass_number: int):
    """An object ref to the keys the judged rows have, when few rows are judged (an incremental
    pass): only rows sharing one of them are shuffled. None when most rows are judged: every
    row is shuffled, as it would be anyway."""
    import ray.data

    found = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _bucket_judged_keys, fn_args=(spec, pass_number), batch_size=1, batch_format="numpy", num_cpus=1).take_all()
    rows, judged = sum(f["rows"] for f in found), sum(f["judged"] for f in found)
    if judged > JUDGED_SHARE_TO_FILTER * rows:
        return None
    keys = np.unique(np.concatenate([np.frombuffer(f["keys"], np.int64) for f in found] or [np.zeros(0, np.int64)]))
    logger.info("%d of %d samples judged: shuffling only the rows that share one of their %d keys", judged, rows,
                len(keys))
    return ray.put(pa.array(keys))


def _bucket_ledger(batch: dict, uri: str, pass_number: int, dedup_run_id: str, judge_all: bool) -> dict:
    """Ray task: one bucket's files -> its dedup_seen file(s) and counts, as one JSON row."""
    from etl.sinks.bucket_files import write_bucket_files
    from schemas.tables import dedup_seen_schema

    files = BucketFiles(**json.loads(batch["files"][0]))
    classified = read_bucket(files, (), pass_number, judge_all)
    rows = classified.rows
    ledger = pa.table({"sample_id": rows.column("sample_id"),
                       "bucket": pa.array([files.bucket] * rows.num_rows, pa.int32()),
                       "sample_run_id": rows.column("run_id"), "first_seen": rows.column("first_seen"),
                       "dedup_run_id": pa.array([dedup_run_id] * rows.num_rows, pa.string())})
    written = write_bucket_files(ledger, dedup_seen_schema(), uri, f"{dedup_run_id}-{uuid.uuid4().hex[:8]}")
    counts = {"samples": rows.num_rows, "new": classified.new, "reprocessed": classified.reprocessed,
              "removed": classified.removed, "judged": int(pa.compute.sum(rows.column("judged")).as_py() or 0)}
    return {"payload": [json.dumps({"files": written, "counts": counts})]}


def _write_duplicates(verdicts: pa.Table, uri: str, dedup_run_id: str, samples_version: int) -> dict:
    """Ray task: verdict rows -> duplicates files; their metadata as one JSON row."""
    from etl.sinks.bucket_files import write_bucket_files
    from schemas.tables import duplicates_schema

    count = verdicts.num_rows
    kinds = pa.array([KINDS[k] for k in verdicts.column("kind").to_pylist()], pa.string())
    rows = pa.table({
        "sample_id": verdicts.column("sample_id"), "bucket": verdicts.column("bucket"), "kind": kinds,
        "duplicate_of": verdicts.column("duplicate_of"), "hamming": verdicts.column("hamming"),
        "cosine": verdicts.column("cosine"), "sample_run_id": verdicts.column("sample_run_id"),
        "samples_version": pa.array([samples_version] * count, pa.int64()),
        "dedup_run_id": pa.array([dedup_run_id] * count, pa.string())})
    written = write_bucket_files(rows, duplicates_schema(), uri, f"{dedup_run_id}-{uuid.uuid4().hex[:8]}")
    return {"payload": [json.dumps({"files": written, "kinds": kinds.to_pylist()})]}


def _partitions(config: DedupConfig) -> int:
    import ray

    return config.partitions or max(1, 4 * int(ray.cluster_resources().get("CPU", 1)))


def _payloads(dataset) -> list[dict]:
    return [json.loads(p) for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None)
            for p in batch.column("payload").to_pylist()]


def _verdict_files(buckets: list[BucketFiles], config: DedupConfig, uri: str, pass_number: int,
                   dedup_run_id: str, samples_version: int, judge_all: bool) -> tuple[list[dict], dict[str, int]]:
    import ray.data

    spec, partitions = spec_of(config), _partitions(config)
    items = [{"files": json.dumps(asdict(b))} for b in buckets]
    wanted = None if judge_all else _wanted_keys(items, spec, pass_number)
    keys = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _bucket_keys, fn_args=(spec, pass_number, judge_all, wanted), batch_size=1, batch_format="numpy", num_cpus=1)
    # the shuffle's map tasks each take this much input: Ray's default (1 GiB) made one task of
    # 100K samples' key rows, and its memory grows with the input
    keys.context.shuffle_input_batch_bytes = SHUFFLE_INPUT_BYTES
    edges = keys.groupby("slot", num_partitions=partitions).map_groups(
        compare_groups, fn_args=(spec,), batch_format="pyarrow")
    verdicts = edges.groupby("bucket", num_partitions=partitions).map_groups(pick_verdicts, batch_format="pyarrow")
    written = verdicts.map_batches(_write_duplicates, fn_args=(uri, dedup_run_id, samples_version),
                                   batch_format="pyarrow", batch_size=None)
    files, kinds = [], {}
    for payload in _payloads(written):
        files += payload["files"]
        for kind in payload["kinds"]:
            kinds[kind] = kinds.get(kind, 0) + 1
    return files, kinds


def _ledger_files(buckets: list[BucketFiles], uri: str, pass_number: int, dedup_run_id: str,
                  judge_all: bool) -> tuple[list[dict], dict[str, int]]:
    import ray.data

    items = [{"files": json.dumps(asdict(b))} for b in buckets]
    written = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _bucket_ledger, fn_args=(uri, pass_number, dedup_run_id, judge_all), batch_size=1, batch_format="numpy", num_cpus=1)
    files, counts = [], {}
    for payload in _payloads(written):
        files += payload["files"]
        for name, value in payload["counts"].items():
            counts[name] = counts.get(name, 0) + value
    return files, counts


def run_dedup(output: str, config: DedupConfig, samples_version: Optional[int] = None) -> DedupSummary:
    """One pass over the samples table under `output` (at `samples_version`, else the latest)."""
    from etl.sinks.delta_commits import open_table, overwrite_files
    from schemas.tables import dedup_seen_schema, duplicates_schema

    started = time.perf_counter()
    uris = {name: storage.join(output, name) for name in (SAMPLES, DUPLICATES, SEEN)}
    samples = open_table(uris[SAMPLES])
    if samples is None:
        raise FileNotFoundError(f"no samples table at {uris[SAMPLES]}: run the curation job first")
    if samples_version is not None:
        samples.load_as_version(samples_version)
    seen, duplicates = open_table(uris[SEEN]), open_table(uris[DUPLICATES])
    read_versions = {name: None if table is None else table.version()
                     for name, table in ((SEEN, seen), (DUPLICATES, duplicates))}
    last_pass, last_settings = _last_pass(seen)
    settings = config.model_dump_json(exclude={"partitions", "after_run"})
    judge_all = settings != last_settings  # other settings: every earlier verdict is void
    summary = DedupSummary(time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6], output,
                           samples.version(), last_pass + 1)
    by_table = [_files_by_bucket(t, uris[n]) for t, n in ((samples, SAMPLES), (seen, SEEN), (duplicates, DUPLICATES))]
    buckets = [BucketFiles(b, by_table[0].get(b, []), by_table[1].get(b, []), by_table[2].get(b, []))
               for b in sorted(set().union(*by_table))]
    metadata = {"dedup_run_id": summary.dedup_run_id, "samples_version": summary.samples_version,
                PASS_KEY: summary.pass_number, CONFIG_KEY: settings}
    phase = time.perf_counter()
    found, summary.duplicates = _verdict_files(buckets, config, uris[DUPLICATES], summary.pass_number,
                                               summary.dedup_run_id, summary.samples_version, judge_all)
    summary.phases["verdicts"] = time.perf_counter() - phase
    phase = time.perf_counter()
    ledger, counts = _ledger_files(buckets, uris[SEEN], summary.pass_number, summary.dedup_run_id, judge_all)
    summary.phases["ledger"] = time.perf_counter() - phase
    phase = time.perf_counter()
    for name, value in counts.items():
        setattr(summary, name, value)
    overwrite_files(uris[DUPLICATES], duplicates_schema(), found, metadata, read_versions[DUPLICATES])
    overwrite_files(uris[SEEN], dedup_seen_schema(), ledger, metadata, read_versions[SEEN])
    summary.phases["commits"] = time.perf_counter() - phase
    summary.seconds = time.perf_counter() - started
    logger.info(summary.line())
    return summary


def dedup_after_run(config) -> tuple[dict, Optional[str]]:
    """A `jobs.dedup` pass over the output (`dedup.after_run`, Delta tables). Like maintenance,
    a failure is reported, not raised: the run's rows are committed, and `python -m jobs.dedup`
    runs the pass again."""
    if config.sink.format != "delta" or not config.dedup.after_run:
        return {}, None
    try:
        return asdict(run_dedup(config.output, config.dedup)), None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.exception("the dedup pass over %s failed", config.output)
        return {}, f"{type(exc).__name__}: {exc}"
