"""`MDSDatasink`: write a Ray Dataset as MDS, workers in parallel, index.json last.

Each write task writes its shards into its own sub-folder with `MDSWriter` and returns only
their index entries. The driver, in `on_write_complete`, writes the root index.json that lists
every task's shards with sub-folder basenames: the reference's "merged index" layout. Until that
moment there is no root index, so a failed write never leaves one pointing at missing shards;
`on_write_failed` also removes the sub-folders this write created.
"""

import uuid
from typing import Any, Iterable, Mapping, Optional

import pyarrow.fs as pafs
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from etl import storage
from etl.mds.index import INDEX_BASENAME, index_json
from etl.mds.writer import MDSWriter, writer_options

_PART_PREFIX = "part-"


class MDSDatasink(Datasink[list[dict[str, Any]]]):
    """`settings` are `MDSWriter`'s (columns, compression, hashes, size_limit), checked here on
    the driver before any task starts and handed to each task's writer as they are."""

    def __init__(self, uri: str, settings: Mapping[str, Any], *, filesystem: Optional[pafs.FileSystem] = None):
        options = writer_options(**settings)
        self.settings, self.columns, self.size_limit = dict(settings), dict(settings["columns"]), options.size_limit
        self._uri = uri
        self._filesystem = filesystem
        self._write_id = uuid.uuid4().hex[:12]

    def _resolve(self):
        return storage.resolve(self._uri, self._filesystem)

    def on_write_start(self, schema=None) -> None:
        fs, root = self._resolve()
        if storage.exists(fs, storage.join(root, INDEX_BASENAME)):
            raise FileExistsError(f"{storage.display(fs, root)} already holds an index.json; "
                                  "write to a new location")
        if schema is not None:
            missing = sorted(set(self.columns) - set(schema.names))
            if missing:
                raise ValueError(f"dataset lacks column(s) {missing}; it has {schema.names}")
        fs.create_dir(root, recursive=True)

    @property
    def min_bytes_per_write(self) -> Optional[int]:
        # Hand each task at least a shard's worth of rows so tasks do not write tiny shards.
        return self.size_limit

    def write(self, blocks: Iterable[Block], ctx) -> list[dict[str, Any]]:
        fs, root = self._resolve()
        subdir = f"{_PART_PREFIX}{self._write_id}-{ctx.task_idx:06d}"
        writer = MDSWriter(root, **self.settings, subdir=subdir, write_index=False, filesystem=fs)
        with writer:
            for block in blocks:
                writer.write_table(BlockAccessor.for_block(block).to_arrow())
        return [{"task": ctx.task_idx, "entry": entry} for entry in writer.shards]

    def on_write_complete(self, write_result: WriteResult[list[dict[str, Any]]]) -> None:
        results = [r for task_results in write_result.write_returns for r in task_results]
        # Task order, then shard order within a task: a stable shard numbering.
        entries = [r["entry"] for r in sorted(results, key=lambda r: (r["task"], r["entry"]["raw_data"]["basename"]))]
        fs, root = self._resolve()
        storage.write_file(fs, storage.join(root, INDEX_BASENAME), index_json(entries))
        self.shard_count = len(entries)

    def on_write_failed(self, error: Exception) -> None:
        fs, root = self._resolve()
        try:
            selector = pafs.FileSelector(root, allow_not_found=True)
            for info in fs.get_file_info(selector):
                if info.base_name.startswith(f"{_PART_PREFIX}{self._write_id}-"):
                    storage.delete_dir(fs, info.path)
        except OSError:
            pass  # best effort: without a root index.json these files are unreachable anyway
