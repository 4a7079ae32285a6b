"""One filesystem layer for local paths and s3:// URIs: pyarrow.fs, the layer Ray Data uses.

Local files are memory-mapped, so reading a shard costs no copy until a column is cut out of it.
S3 objects are read with one GET per shard (ranged reads are available through the same handle).
Endpoint and credentials come from the standard AWS environment variables and profiles.
"""

import os
import posixpath
import uuid
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs


def resolve(uri: str, filesystem: Optional[pafs.FileSystem] = None) -> tuple[pafs.FileSystem, str]:
    """`uri` -> (filesystem, path inside it)."""
    if filesystem is not None:
        return filesystem, uri.split("://", 1)[-1].rstrip("/")
    if "://" not in uri or uri.startswith("file://"):
        local = uri[len("file://"):] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(use_mmap=True), os.path.abspath(os.path.expanduser(local))
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def is_local(fs: pafs.FileSystem) -> bool:
    return fs.type_name == "local"


def display(fs: pafs.FileSystem, path: str) -> str:
    """The path as a user would write it, for messages."""
    return path if is_local(fs) else f"{fs.type_name}://{path}"


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def read_file(fs: pafs.FileSystem, path: str) -> tuple[pa.Buffer, int]:
    """Whole file as an Arrow buffer (zero-copy mmap for local files), plus its size."""
    with fs.open_input_file(path) as f:
        size = f.size()
        return f.read_buffer(size), size


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_file(fs: pafs.FileSystem, path: str, data) -> None:
    """Write a whole file so that readers see all of it or none of it.

    An S3 PUT is atomic already; a local file is written aside and renamed into place.
    """
    parent = posixpath.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    target = path if not is_local(fs) else f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(target) as out:
        out.write(data)
    if target != path:
        fs.move(target, path)


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass
