"""Demo: write a synthetic multi-frame MDS dataset with write_mds, damage one shard, read it back
with read_mds, and print what a user needs to see.

    python -m jobs.mds_demo [--output DIR] [--samples N]
"""

import argparse
import shutil
import time
from collections import Counter
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output/mds", help="where to write the dataset")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args(argv)

    import pyarrow as pa
    import ray
    import ray.data

    import etl
    from etl import synthetic

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = Path(args.output).resolve()
    shutil.rmtree(out, ignore_errors=True)

    rows = list(synthetic.samples(args.samples, corrupt_every=60))
    start = time.perf_counter()
    shards = etl.write_mds(ray.data.from_items(rows, override_num_blocks=4), str(out),
                           columns={"id": "int", "caption": "str", "frames": "jpeg_array"},
                           compression="zstd", hashes=["xxh64"], size_limit="2mb")
    written = time.perf_counter() - start
    print(f"wrote {args.samples} samples as {shards} zstd shards under {out} in {written:.1f}s")

    # Damage one shard the way storage does: a truncated object.
    victim = sorted(out.rglob("shard.*.mds.zstd"))[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    print(f"truncated {victim.relative_to(out)} to show how a damaged shard is accounted for")

    start = time.perf_counter()
    dataset = etl.read_mds(str(out), on_bad_shard="quarantine", verify_hashes=["xxh64"])
    table = pa.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    read = time.perf_counter() - start
    errors = Counter(e for e in table.column("mds_error").to_pylist() if e)
    frames = sum(len(f) for f in table.column("frames").to_pylist() if f)
    print(f"read {table.num_rows} rows ({frames} frames) from {len(set(table.column('shard').to_pylist()))} "
          f"shards in {read:.1f}s: {table.num_rows - sum(errors.values())} good, {sum(errors.values())} with errors")
    for reason, count in errors.most_common():
        print(f"  {count:4d} x {reason}")
    print("corrupt JPEG frames inside good shards stay bytes here; the frame decoder quarantines them")
    ray.shutdown()


if __name__ == "__main__":
    main()
