"""What each operator declared to Ray against what its workers used, from Ray Data's own
per-operator metrics once the dataset has run.

Ray Data samples each worker's USS (unique set size: its private pages, what it would free
if killed) during every task or actor call and keeps the distribution per operator
(`max_uss_bytes`). Its issue detector warns at the end of a run when 1.25 x the largest sample
exceeds the operator's declared `memory`; the job keeps declared / observed at or above that,
so the warning never fires, and below 1.5, so it reserves no more than it needs.
"""

import re
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class OperatorMemory:
    operator: str              # Ray Data's name, fused operators joined by "->"
    declared: Optional[int]    # bytes per worker, as declared; None: nothing declared
    observed_max: Optional[int]   # the largest per-task USS sample; None: Ray took none
    observed_mean: Optional[float]
    samples: int

    @property
    def ratio(self) -> Optional[float]:
        return self.declared / self.observed_max if self.declared and self.observed_max else None

    def line(self) -> str:
        declared = f"{self.declared / 2**20:.0f} MiB" if self.declared else "nothing"
        if not self.samples:
            return f"{self.operator}: declared {declared}, no memory sample"
        ratio = f"{self.ratio:.2f}x" if self.ratio else "n/a"
        return (f"{self.operator}: declared {declared}, used up to {self.observed_max / 2**20:.0f} MiB per worker "
                f"({ratio})")

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def operator_memory(dataset, declared_by_stage: dict[str, Optional[int]]) -> list[OperatorMemory]:
    """Per operator of `dataset` (after it ran), in data-flow order. `declared_by_stage`: the
    memory each stage class declared ({"EncodeStage": bytes}, the read as "ReadMDS"); a fused
    operator's is its last stage's, as Ray fuses only stages whose remote args match."""
    found = []
    summary = dataset._get_stats_summary()  # Ray Data's stats API; `dataset.stats()` is its text form
    while summary is not None:
        metrics = (summary.extra_metrics or {}).get("max_uss_bytes") or {}
        if summary.operators_stats:
            name = summary.operators_stats[-1].operator_name
            last = name.split("->")[-1]
            stage = re.fullmatch(r"MapBatches\((\w+)\)", last)
            sampled = int(metrics.get("num_samples") or 0)
            found.append(OperatorMemory(name, declared_by_stage.get(stage.group(1) if stage else last),
                                        int(metrics["max"]) if sampled else None,
                                        float(metrics["mean"]) if sampled else None, sampled))
        summary = summary.parents[0] if summary.parents else None
    return found[::-1]
