"""The cluster as one run saw it: the nodes lost and joined while it ran, and the work Ray ran
again because of them (tasks retried, actors restarted elsewhere). The run summary and report
carry it, next to where each stage ran (counted from the rows by the write stage).

Ray's own records are the source: `ray.nodes()` for who is alive, and the State API (served by
the head's dashboard) for failed task attempts and actor restarts. A cluster without a
dashboard still gets the nodes; the retries are then reported as unknown, with the reason.
"""

import logging
from dataclasses import asdict, dataclass, field
from typing import Optional

logger = logging.getLogger(__name__)

STATE_API_LIMIT = 10_000   # the State API's own cap on one listing


@dataclass
class ClusterEvents:
    lost_nodes: list[dict] = field(default_factory=list)     # {"node_id", "died_at" (unix s), "reason"}
    joined_nodes: list[dict] = field(default_factory=list)   # {"node_id", "resources"}
    retried_tasks: list[dict] = field(default_factory=list)  # {"work", "node_id", "error_type", "attempts"}
    restarted_actors: list[dict] = field(default_factory=list)  # {"actor", "node_id" (now), "restarts"}
    unknown: Optional[str] = None    # why the retries could not be listed

    def as_dict(self) -> dict:
        return asdict(self)


def _node_table() -> dict[str, dict]:
    import ray

    return {node["NodeID"]: node for node in ray.nodes()}


class ClusterWatch:
    """Started before the run plans; `events()` after it ends, whatever the outcome."""

    def __init__(self):
        import ray

        nodes = _node_table()
        self.alive_at_start = {node_id for node_id, node in nodes.items() if node["Alive"]}
        self.known_at_start = set(nodes)
        self.job_id = ray.get_runtime_context().get_job_id()
        self.address = _dashboard_address()

    def events(self) -> ClusterEvents:
        nodes = _node_table()
        events = ClusterEvents(joined_nodes=[
            {"node_id": node_id, "resources": _schedulable(node["Resources"])}
            for node_id, node in nodes.items() if node_id not in self.known_at_start])
        lost = [node_id for node_id, node in nodes.items()
                if not node["Alive"] and (node_id in self.alive_at_start or node_id not in self.known_at_start)]
        try:
            if not self.address:
                # asked anyway, the State API tries port 8265 of this host: some other cluster's
                raise LookupError("this Ray cluster runs no dashboard")
            events.lost_nodes = _lost_node_details(lost, self.address)
            events.retried_tasks = _failed_attempts(self.job_id, self.address)
            events.restarted_actors = _restarted_actors(self.job_id, self.address)
        except Exception as exc:  # noqa: BLE001 - the retries are a report's detail, never worth failing a run
            events.lost_nodes = [{"node_id": node_id, "died_at": None, "reason": None} for node_id in lost]
            events.unknown = f"Ray's State API did not answer ({type(exc).__name__}: {exc})"
        for node in events.lost_nodes:
            logger.warning("node %s was lost during the run (%s)", node["node_id"], node["reason"] or "no reason given")
        return events


def _dashboard_address() -> str:
    """The dashboard of the cluster this driver joined ("" when it runs none): the State API's
    server."""
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    return f"http://{url}" if url else ""


def _schedulable(resources: dict) -> dict:
    return {key: value for key, value in resources.items() if not key.startswith("node:")}


def _lost_node_details(node_ids: list[str], address: str) -> list[dict]:
    from ray.util.state import list_nodes

    if not node_ids:
        return []
    states = {node.node_id: node for node in list_nodes(address, filters=[("state", "=", "DEAD")],
                                                        limit=STATE_API_LIMIT, detail=True,
                                                        raise_on_missing_output=False)}
    details = []
    for node_id in node_ids:
        state = states.get(node_id)
        ended = getattr(state, "end_time_ms", None)
        details.append({"node_id": node_id, "died_at": ended / 1000 if ended else None,
                        "reason": getattr(state, "state_message", None)})
    return details


def _failed_attempts(job_id: str, address: str) -> list[dict]:
    """Failed attempts of this job's tasks, per (work, node, cause): each was run again, or
    failed the run."""
    from ray.util.state import list_tasks

    counts: dict[tuple, int] = {}
    for task in list_tasks(address, filters=[("job_id", "=", job_id), ("state", "=", "FAILED")], limit=STATE_API_LIMIT,
                           raise_on_missing_output=False):
        key = (task.name, task.node_id, task.error_type)
        counts[key] = counts.get(key, 0) + 1
    return [{"work": work, "node_id": node_id, "error_type": error_type, "attempts": attempts}
            for (work, node_id, error_type), attempts in sorted(counts.items(), key=lambda kv: -kv[1])]


def _restarted_actors(job_id: str, address: str) -> list[dict]:
    from ray.util.state import list_actors

    return [{"actor": actor.class_name, "node_id": actor.node_id, "restarts": actor.num_restarts}
            for actor in list_actors(address, filters=[("job_id", "=", job_id)], limit=STATE_API_LIMIT, detail=True,
                                     raise_on_missing_output=False)
            if int(actor.num_restarts or 0) > 0]


def placement_by_node(placement: dict[str, dict[str, int]]) -> dict[str, dict[str, dict]]:
    """{stage: {"<node>/<worker>": rows}} (as the write stage counts them) ->
    {stage: {node: {"workers": distinct actors or tasks, "rows": rows}}}."""
    by_node: dict[str, dict[str, dict]] = {}
    for stage, places in placement.items():
        nodes = by_node.setdefault(stage, {})
        for place, count in places.items():
            node = nodes.setdefault(place.split("/", 1)[0], {"workers": 0, "rows": 0})
            node["workers"] += 1
            node["rows"] += count
    return by_node
