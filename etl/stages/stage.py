"""What every stage declares, and the check that the stages fit together.

A stage is a callable class, as Ray Data runs it: its `__init__` is its setup (on each actor of
its pool: models load there, once) and its `__call__` the per-batch work. Its classmethod
`step(run)` declares, on the driver, before any work: the columns it reads, adds and drops, its
resources as a function of the run's plan, and its constructor's arguments. `etl.pipeline` builds
the Ray Data plan from those steps alone.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pyarrow as pa

if TYPE_CHECKING:
    from etl.config import JobConfig
    from etl.planner import Plan
    from etl.stages.previews import PreviewRows


@dataclass(frozen=True)
class Resources:
    """What a stage asks Ray for, per task or per actor."""

    cpus: float
    gpus: float = 0.0
    memory: Optional[int] = None     # bytes declared to Ray (None: nothing declared)
    actors: Optional[int] = None     # None: Ray tasks (fused into the read); else an actor pool this size
    max_tasks: Optional[int] = None  # Ray tasks: at most this many at once (the read's, to fuse with it)
    batch_rows: Optional[int] = None  # None: whole blocks
    concurrent_batches: int = 1      # batches one actor takes at once
    # Where Ray puts the pool's actors: "spread" (Ray Data's default: one node after another) or
    # "reserved" (a placement group holds their resources before any work starts: etl.reservations)
    placement: str = "spread"


@dataclass(frozen=True)
class Step:
    """One stage of the plan as the driver sees it."""

    stage: type                      # the callable class Ray constructs
    arguments: tuple                 # its constructor's
    reads: tuple[str, ...]
    adds: dict[str, pa.DataType]
    resources: Resources
    drops: tuple[str, ...] = ()
    replaces_row: bool = False       # its output holds only `adds` (the first stage after the read)

    @property
    def name(self) -> str:
        return self.stage.__name__

    def columns_after(self, columns: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
        kept = {} if self.replaces_row else {k: v for k, v in columns.items() if k not in self.drops}
        return {**kept, **self.adds}


@dataclass(frozen=True)
class RunContext:
    """The facts the stages are built from, each derived once on the driver."""

    config: "JobConfig"              # with absolute model paths
    plan: "Plan"
    run_id: str
    image_column: str                # the input column holding the frames
    input_types: dict[str, pa.DataType]  # the read's output columns (`MDSDatasource.schema`)
    schemas: dict[str, pa.Schema]    # the tables the write stage writes
    previews: "PreviewRows"          # the rows the report's contact sheet shows


class ContractError(ValueError):
    """A stage reads a column that no stage before it provides."""


def check_contract(steps: list[Step], read: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
    """The columns after the last step, or ContractError naming the stage and the missing column."""
    columns = dict(read)
    for step in steps:
        missing = [name for name in step.reads if name not in columns]
        if missing:
            raise ContractError(f"{step.name} reads {missing}, which no stage before it adds "
                                f"(columns then: {sorted(columns)})")
        columns = step.columns_after(columns)
    return columns
