"""What every part of the planner shares: byte units, their display, and the refusal."""

GIB = 1 << 30
MIB = 1 << 20


class PlanError(ValueError):
    """The config cannot run on this cluster; every problem is named with its fix."""


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB // 10 else f"{n / MIB:.0f} MiB"
