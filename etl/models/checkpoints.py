"""Checkpoints from a local path or a storage URI (s3://...), for `from_pretrained(path)`.

transformers, diffusers and vLLM load from a directory (or a hub name, which the job never
uses: no network at run time except the storage endpoint). A checkpoint on S3 is copied once
per node into a local cache, then loaded from there like any local checkpoint. Several actors
on one node may ask at once: one copies under a file lock, the others wait and reuse it. A copy
counts only once complete (a marker written last), so a killed copy is redone, never loaded.
"""

import hashlib
import os
import shutil
from pathlib import Path

CACHE_ENV = "ETL_MODEL_CACHE"
_DONE = ".etl-complete"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "etl-models")


def local_checkpoint(uri: str) -> str:
    """A local directory holding the checkpoint at `uri` (itself when already local)."""
    if "://" not in uri:
        return uri
    import fcntl

    import pyarrow.fs as pafs

    from etl import storage

    target = cache_root() / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if (target / _DONE).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _DONE).exists():
            fs, root = storage.resolve(uri)
            if fs.get_file_info(root).type != pafs.FileType.Directory:
                raise FileNotFoundError(f"no checkpoint directory at {uri}")
            partial = Path(f"{target}.partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
            pafs.copy_files(root, str(partial), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
            (partial / _DONE).write_text(uri)
            if target.exists():
                shutil.rmtree(target)
            partial.rename(target)
    return str(target)


def local_config(uri: str, name: str = "config.json") -> str:
    """A local directory holding only the checkpoint's config file: enough for the driver to
    learn output shapes (`AutoConfig.from_pretrained(dir)`) without fetching the weights."""
    if "://" not in uri:
        return uri
    from etl import storage

    target = cache_root() / (hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16] + "-config")
    target.mkdir(parents=True, exist_ok=True)
    fs, root = storage.resolve(uri)
    with fs.open_input_stream(storage.join(root, name)) as stream:
        data = stream.read()
    partial = target / f".{name}.{os.getpid()}"
    partial.write_bytes(data)
    partial.replace(target / name)
    return str(target)
