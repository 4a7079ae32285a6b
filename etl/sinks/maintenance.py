"""Table health: what keeps the Delta tables cheap to read after hundreds of commit rounds.

Each run adds ~`buckets` small files per write batch (the 1M run left 3,668 files of 273 rows on
average in `samples`) and a log entry per commit. After a run, and in `python -m jobs.maintain`:
1. compaction (`etl.sinks.compaction`, not delta-rs OPTIMIZE, which duplicated every row when
   two ran at once) packs each bucket's files below the target size into files of about that
   size. The rows, their values and `run_id` are unchanged; the commit has `dataChange=false`,
   so a reader or a streaming consumer sees the same rows.
2. vacuum of files removed longer ago than `retention_hours`: a reader pinned to a version
   inside the retention still reads it. Lite mode only (files the log tombstoned): a file that
   a running job wrote and has not committed yet is not in the log, and is never touched.
3. a log checkpoint at the new version, and the table property `delta.checkpointInterval`, by
   which delta-rs writes one every N commits during runs too.

Concurrent writers: compaction is one Delta transaction on the version it was planned on. A run
that only appends costs it a recommit; a backfill or another compaction that removed one of its
files makes it plan again on the new snapshot.
"""

import logging
import posixpath
import time
from dataclasses import asdict, dataclass
from typing import Optional

from etl import storage
from etl.config import MaintenanceConfig
from etl.sinks.compaction import compact
from etl.sinks.delta_commits import open_table

logger = logging.getLogger(__name__)

TABLES = ("samples", "quarantine", "runs", "duplicates", "dedup_seen")
_CHECKPOINT_INTERVAL = "delta.checkpointInterval"


@dataclass
class TableHealth:
    """One table's maintenance: its active files and log before and after."""

    table: str
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    files_vacuumed: int       # removed files past the retention, deleted now
    log_bytes_before: int     # the _delta_log folder, JSON entries and checkpoints
    log_bytes_after: int
    replay_before: int        # JSON entries a reader replays on top of the last checkpoint
    replay_after: int
    seconds: float

    def line(self) -> str:
        return (f"{self.table}: {self.files_before} -> {self.files_after} files, {self.files_vacuumed} vacuumed, "
                f"log {self.log_bytes_before / 1024:.0f} -> {self.log_bytes_after / 1024:.0f} KiB with "
                f"{self.replay_before} -> {self.replay_after} entries past its checkpoint, now v{self.version_after} "
                f"({self.seconds:.1f}s)")

    def as_dict(self) -> dict:
        return asdict(self)


def table_properties(settings: MaintenanceConfig) -> dict[str, str]:
    """The Delta table properties a run creates its tables with."""
    return {_CHECKPOINT_INTERVAL: str(settings.checkpoint_interval)}


def maintain_tables(output: str, settings: MaintenanceConfig, tables=TABLES) -> list[TableHealth]:
    """Compact, vacuum and checkpoint every Delta table of `tables` under `output`; a table that
    does not exist is skipped. Raises FileNotFoundError naming `output` when none exists."""
    done = []
    for name in tables:
        uri = storage.join(output, name)
        table = open_table(uri)
        if table is not None:
            with storage.naming("maintaining", uri):
                done.append(maintain_table(uri, table, settings))
    if not done:
        raise FileNotFoundError(f"no Delta table under {output} (looked for {', '.join(tables)})")
    return done


def maintain_table(uri: str, table, settings: MaintenanceConfig) -> TableHealth:
    started = time.perf_counter()
    version_before, files_before, log_before = table.version(), len(table.file_uris()), log_shape(uri)
    wanted = table_properties(settings)
    if {key: table.metadata().configuration.get(key) for key in wanted} != wanted:
        table.alter.set_table_properties(wanted)
    compact(uri, table, settings.target_file_mb << 20)
    vacuumed = vacuum(table, settings.retention_hours)
    table.create_checkpoint()
    table.cleanup_metadata()  # log entries past delta.logRetentionDuration (30 days), before a checkpoint
    log_after = log_shape(uri)
    return TableHealth(posixpath.basename(uri.rstrip("/")), version_before, table.version(), files_before,
                       len(table.file_uris()), vacuumed, log_before[0], log_after[0], log_before[1], log_after[1],
                       time.perf_counter() - started)


def vacuum(table, retention_hours: int) -> int:
    """Delete files removed longer ago than the retention (lite mode: tombstoned files only).
    A dry run first, so a table with nothing to delete gets no VACUUM commits."""
    expired = table.vacuum(retention_hours=retention_hours, dry_run=True, enforce_retention_duration=False)
    if not expired:
        return 0
    return len(table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False))


def log_shape(uri: str) -> tuple[int, int]:
    """(bytes of the table's _delta_log, JSON entries past its last checkpoint)."""
    fs, root = storage.resolve(uri)
    files = storage.folder_sizes(fs, storage.join(root, "_delta_log"))
    checkpoints = [int(name.split(".", 1)[0]) for name in files if ".checkpoint." in name]
    last = max(checkpoints, default=-1)
    replay = sum(1 for name in files if name.endswith(".json") and name[:20].isdigit() and int(name[:20]) > last)
    return sum(files.values()), replay


def maintain_after_run(config) -> tuple[list[dict], Optional[str]]:
    """Compact, vacuum and checkpoint the tables (Delta, `sink.maintenance.enabled`). Every row
    is committed by now, so a failure here is reported, not raised: the tables are correct, only
    not yet tidy, and `python -m jobs.maintain` does it again."""
    settings = config.sink.maintenance
    if config.sink.format != "delta" or not settings.enabled:
        return [], None
    try:
        return [health.as_dict() for health in maintain_tables(config.output, settings)], None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.exception("maintenance of the tables under %s failed", config.output)
        return [], f"{type(exc).__name__}: {exc}"
