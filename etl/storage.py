"""One filesystem layer for local paths and s3:// URIs: pyarrow.fs, the layer Ray Data uses.

Local files are memory-mapped, so reading a shard costs no copy until a column is cut out of it.
S3 objects are read with one GET per shard (ranged reads are available through the same handle).
Endpoint and credentials come from the standard AWS environment variables and profiles
(`AWS_ENDPOINT_URL[_S3]`, `AWS_ACCESS_KEY_ID`..., `AWS_PROFILE`); nothing here logs or stores
them. Transient S3 errors (5xx, throttling, reset connections) are retried by the AWS SDK's
standard strategy (exponential backoff with jitter) up to `AWS_MAX_ATTEMPTS` attempts (default
10), then the error surfaces. Delta commits go through delta-rs's object_store with the same
endpoint and bound (`delta_storage_options`).
"""

import contextlib
import os
import posixpath
import uuid
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs


def resolve(uri: str, filesystem: Optional[pafs.FileSystem] = None) -> tuple[pafs.FileSystem, str]:
    """`uri` -> (filesystem, path inside it)."""
    if filesystem is not None:
        return filesystem, uri.split("://", 1)[-1].rstrip("/")
    if "://" not in uri or uri.startswith("file://"):
        local = uri[len("file://"):] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(use_mmap=True), os.path.abspath(os.path.expanduser(local))
    if uri.startswith(("s3://", "s3a://")):
        return _s3(), uri.split("://", 1)[1].rstrip("/")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


DEFAULT_MAX_ATTEMPTS = 10


def max_attempts() -> int:
    return int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))


def s3_endpoint() -> Optional[str]:
    """The standard variables' endpoint (service-specific first), or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3() -> pafs.S3FileSystem:
    # Region: AWS_REGION / AWS_DEFAULT_REGION / profile, as the SDK resolves it.
    return pafs.S3FileSystem(endpoint_override=s3_endpoint(), connect_timeout=10, request_timeout=60,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts()))


def delta_storage_options(uri: str) -> Optional[dict[str, str]]:
    """delta-rs storage options for `uri`: the same endpoint and retry bound as pyarrow's S3.
    Credentials are left to delta-rs's own reading of the AWS variables and profiles."""
    if not uri.startswith(("s3://", "s3a://")):
        return None
    options = {"max_retries": str(max_attempts() - 1), "retry_timeout": "120s"}
    endpoint = s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    return options


def is_local(fs: pafs.FileSystem) -> bool:
    return fs.type_name == "local"


def display(fs: pafs.FileSystem, path: str) -> str:
    """The path as a user would write it, for messages."""
    return path if is_local(fs) else f"{fs.type_name}://{path}"


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


@contextlib.contextmanager
def naming(action: str, where: str) -> Iterator[None]:
    """An OSError raised inside names what was being done to what ("writing s3://b/x: ..."),
    unless its message already holds `where`. Its class is kept, so callers that catch
    FileNotFoundError still do. The message is its one argument: Ray Data appends its retry note
    to a message argument, but to an (errno, message) pair as a third, filename, argument."""
    try:
        yield
    except OSError as exc:
        if where in str(exc):
            raise
        message = f"{action} {where}: {exc.strerror if exc.errno is not None and exc.strerror else exc}"
        try:
            named = type(exc)(message)
        except TypeError:  # a subclass with its own constructor
            named = OSError(message)
        named.errno = exc.errno
        raise named from exc


def read_file(fs: pafs.FileSystem, path: str) -> tuple[pa.Buffer, int]:
    """Whole file as an Arrow buffer (zero-copy mmap for local files), plus its size."""
    with naming("reading", display(fs, path)), fs.open_input_file(path) as f:
        size = f.size()
        return f.read_buffer(size), size


def exists(fs: pafs.FileSystem, path: str) -> bool:
    with naming("looking for", display(fs, path)):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_file(fs: pafs.FileSystem, path: str, data) -> None:
    """Write a whole file so that readers see all of it or none of it.

    An S3 PUT is atomic already; a local file is written aside and renamed into place.
    """
    with naming("writing", display(fs, path)):
        parent = posixpath.dirname(path)
        if parent:
            fs.create_dir(parent, recursive=True)
        target = path if not is_local(fs) else f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(target) as out:
            out.write(data)
        if target != path:
            fs.move(target, path)


def check_output_root(uri: str) -> None:
    """Before any work, without writing: a local output's nearest existing folder is a writable
    folder; an S3 output's bucket exists."""
    fs, root = resolve(uri)
    where = display(fs, root)
    if is_local(fs):
        existing = root
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise NotADirectoryError(f"output {where}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"output {where}: {existing} is not writable by this user")
        return
    bucket = root.split("/", 1)[0]
    with naming("looking for the bucket of the output", where):
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    if not found:
        raise FileNotFoundError(f"output {where}: bucket {bucket!r} does not exist")


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    try:
        with naming("deleting", display(fs, path)):
            fs.delete_dir(path)
    except FileNotFoundError:
        pass


def folder_sizes(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    """{name: bytes} of the files directly in `path` (empty when it does not exist)."""
    with naming("listing", display(fs, path)):
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {info.base_name: info.size for info in found if info.type == pafs.FileType.File}
