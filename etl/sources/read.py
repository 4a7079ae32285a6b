"""`read_mds`: the one way a dataset is read, by the job and by users alike."""

from typing import Any, Optional, Union

from etl.sources.mds_datasource import MDSDatasource
from etl.sources.read_options import ReadOptions, split_options


def read_mds(source: Union[str, MDSDatasource], options: Optional[ReadOptions] = None, *, filesystem=None,
             **kwargs: Any):
    """Read an MDS dataset as a `ray.data.Dataset`.

    `source` is the dataset's URI, or an `MDSDatasource` the caller built to look at its read
    tasks first (the curation job plans against them). Options come as `ReadOptions`, or as
    keywords naming its fields (`read_mds(uri, columns=["frames"])`); every other keyword goes
    to `ray.data.read_datasource` (num_cpus, memory, ray_remote_args, ...). Rows carry `shard`
    and `row` (provenance in index.json) and `mds_error` (null unless the sample, or its whole
    shard under on_bad_shard="quarantine", could not be decoded). One Ray read task per
    `ReadTasks` group: the count is passed as `override_num_blocks`.
    """
    import ray.data

    named, read_args = split_options(kwargs)
    if isinstance(source, MDSDatasource):
        if options is not None or named != ReadOptions() or filesystem is not None:
            raise ValueError("read_mds: a datasource carries its own options and filesystem; pass none with it")
    else:
        if options is not None and named != ReadOptions():
            raise ValueError("read_mds: pass the options either as ReadOptions or as keywords, not both")
        source = MDSDatasource(source, options or named, filesystem=filesystem)
    if "override_num_blocks" in read_args:
        raise ValueError("read_mds sets override_num_blocks itself: one block stream per read task")
    return ray.data.read_datasource(source, override_num_blocks=source.num_read_tasks(), **read_args)
