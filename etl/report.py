"""The run report: one self-contained `report.html` next to the tables, readable in a browser
with no server (images inline as data URIs, no scripts, no external files).

It holds samples/s per stage over time (from the per-second counts the write stage sends with
each output), the commits, the quarantine breakdown by cause, a contact sheet (the first frame,
caption and scores of samples spread over the run) and the config, models and plan.

Written as `<output>/report.html` (the latest run) and `<output>/reports/<run_id>.html` (every
run, so a backfill does not hide the report of the run it corrected).
"""

import base64
import html
import io
import math
import time
from typing import Optional

STAGES = ("read", "decode", "caption", "encode", "write")
MAX_BINS = 150  # plot resolution: bins widen on long runs so the plot stays readable


def rates_over_time(timeline: dict[str, dict[int, int]], start: float, end: float
                    ) -> tuple[list[float], dict[str, list[float]], int]:
    """(bin starts in seconds since `start`, {stage: rows/s per bin}, bin width in s)."""
    duration = max(1.0, end - start)
    width = max(1, math.ceil(duration / MAX_BINS))
    bins = math.ceil(duration / width) + 1
    rates = {}
    for stage in STAGES:
        counts = [0] * bins
        for second, rows in timeline.get(stage, {}).items():
            index = min(bins - 1, max(0, int((second - start) // width)))
            counts[index] += rows
        rates[stage] = [c / width for c in counts]
    return [i * width for i in range(bins)], rates, width


def stage_table(timeline: dict[str, dict[int, int]]) -> list[tuple[str, int, float, float]]:
    """(stage, rows, mean rows/s while the stage was producing, peak rows/s over 1 s)."""
    out = []
    for stage in STAGES:
        seconds = timeline.get(stage, {})
        if not seconds:
            continue
        rows = sum(seconds.values())
        active = max(seconds) - min(seconds) + 1
        out.append((stage, rows, rows / active, float(max(seconds.values()))))
    return out


def _throughput_png(summary) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display; also safe in Ray workers and CI
    from matplotlib.figure import Figure

    end = summary.started_at + max(summary.seconds, 1.0)
    x, rates, width = rates_over_time(summary.timeline, summary.started_at, end)
    figure = Figure(figsize=(9, 3.6), dpi=100)
    axes = figure.add_subplot()
    for stage in STAGES:
        if any(rates[stage]):
            axes.step(x, rates[stage], where="post", label=stage)
    for i, at in enumerate(summary.commit_times):
        axes.axvline(at - summary.started_at, color="0.6", linewidth=0.8, linestyle=":",
                     label="commit" if i == 0 else None)
    axes.set_xlabel("seconds since the run started")
    axes.set_ylabel(f"samples/s ({width} s bins)")
    axes.set_xlim(0, max(x[-1], 1))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize="small", ncol=3)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _data_uri(kind: str, payload: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(payload).decode()}"


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:4px;padding:6px;font-size:12px;overflow-wrap:anywhere}
.card img{display:block;max-width:100%;margin:0 auto 4px}
.failed{color:#b00020} pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
"""


def render(summary, config_yaml: str, models: dict[str, str]) -> str:
    """The report of one run as an HTML string (`summary` is an `etl.pipeline.RunSummary`)."""
    e = html.escape
    total = sum(sum(v) for v in summary.per_shard.values()) or summary.rows.get("samples", 0) + summary.rows.get("quarantine", 0)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>run {e(summary.run_id)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>Curation run {e(summary.run_id)}</h1>",
             _table(_facts(summary, total), keys=True), "<h2>Samples/s per stage over time</h2>"]
    if summary.timeline:
        parts.append(f'<img alt="samples per second per stage over time" width=900 height=360 '
                     f'src="{_data_uri("image/png", _throughput_png(summary))}">')
        parts.append(_table([(s, n, f"{m:.1f}", f"{p:.0f}") for s, n, m, p in stage_table(summary.timeline)],
                            header=("stage", "rows", "mean rows/s while producing", "peak rows/s (1 s)"),
                            numeric=(1, 2, 3)))
    else:
        parts.append("<p>No rows reached the write stage.</p>")
    parts += ["<h2>Cluster</h2>", _cluster(summary.placement, summary.cluster),
              "<h2>Captioner</h2>", _engine_table(summary.engine),
              "<h2>Quarantine by cause</h2>", _quarantine(summary, total),
              "<h2>Filters</h2>", _filters(summary),
              "<h2>Duplicates</h2>", _duplicates(summary),
              "<h2>Contact sheet</h2>", _contact_sheet(summary.previews),
              "<h2>Models</h2>", _table([(e(k), e(v)) for k, v in models.items()], keys=True),
              f"<h2>Config</h2><pre>{e(config_yaml)}</pre>",
              f"<h2>Plan</h2><pre>{e(summary.plan or 'not planned')}</pre>"]
    if summary.stage_stats:
        parts.append(f"<details><summary>Ray Data stats</summary><pre>{e(summary.stage_stats)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _facts(summary, total: int) -> list[tuple[str, str]]:
    e = html.escape
    samples, quarantined = summary.rows.get("samples", 0), summary.rows.get("quarantine", 0)
    status = (f'<span class="failed">failed: {e(summary.error)}</span>' if summary.error else "finished")
    first = f"{summary.first_commit_seconds:.1f} s" if summary.first_commit_seconds is not None else "none"
    return [
        ("status", status), ("mode", e(summary.mode)),
        ("started", e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(summary.started_at)))),
        ("output", e(summary.output)), ("shards", f"{len(summary.shards)} processed, "
                                                 f"{len(summary.skipped_shards)} skipped as finished"),
        ("samples", f"{samples} committed, {quarantined} quarantined ({total} read)"),
        ("duration", f"{summary.seconds:.1f} s, {total / summary.seconds if summary.seconds else 0:.1f} samples/s "
                     f"end to end"),
        ("first commit", f"{first}; {len(summary.commit_times)} commit round(s)"),
    ]


def _quarantine(summary, total: int) -> str:
    if not summary.reasons:
        return "<p>No sample was quarantined.</p>"
    causes = sorted(summary.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    return (_table([(html.escape(reason), count, f"{count / max(total, 1):.2%}") for reason, count in causes],
                   header=("stage: cause", "samples", "share of samples read"), numeric=(1, 2))
            + "<p>Every row, with its full reason, is in the <code>quarantine</code> table.</p>")


def _filters(summary) -> str:
    """Each rule of the config's filters: what it asks, the samples it rejected, its pass rate."""
    rules = summary.filters.get("rules", {})
    samples = summary.rows.get("samples", 0)
    if not rules:
        return "<p>No filter set (<code>filters:</code> in the config): every committed sample passes.</p>"
    rejected = summary.filters.get("rejected", {})
    rows = [(html.escape(name), html.escape(asks), rejected.get(name, 0),
             _share(1 - rejected.get(name, 0) / samples) if samples else "n/a") for name, asks in rules.items()]
    passed = samples - summary.filters.get("filtered", 0)
    return (_table(rows, header=("rule", "asks", "samples rejected", "pass rate"), numeric=(2, 3))
            + f"<p>{passed} of {samples} committed samples pass every rule"
            + (f" ({_share(passed / samples)})" if samples else "")
            + ". The others stay in <code>samples</code> with the rules they fail in <code>filtered_by</code>; "
              "<code>etl.ingest.read_samples</code> leaves them out.</p>")


def _duplicates(summary) -> str:
    if summary.dedup_error:
        return f'<p class="failed">The dedup pass failed: {html.escape(summary.dedup_error)}</p>'
    dedup = summary.dedup
    if not dedup:
        return "<p>No dedup pass ran with this run (<code>dedup.after_run</code>); run <code>python -m jobs.dedup</code>.</p>"
    samples = dedup.get("samples", 0)
    rows = [(html.escape(kind), count, _share(count / samples) if samples else "n/a")
            for kind, count in sorted(dedup.get("duplicates", {}).items())]
    facts = (f"<p>Pass {dedup['pass_number']} over samples version {dedup['samples_version']}: {samples} samples, "
             f"{dedup['new']} new, {dedup['judged']} compared, {dedup['seconds']:.1f} s. Each duplicate's row in the "
             f"<code>duplicates</code> table names the copy it duplicates.</p>")
    return facts + (_table(rows, header=("kind", "duplicates", "share of samples"), numeric=(1, 2)) if rows
                    else "<p>No duplicate found.</p>")


def _contact_sheet(previews: list[dict]) -> str:
    if not previews:
        return "<p>No committed sample to show.</p>"
    e = html.escape
    cards = []
    for row in sorted(previews, key=lambda r: (r["shard"], r["row"])):
        scores = (f"quality {_score(row.get('quality'))}, aesthetics {_score(row.get('aesthetics'))}"
                  if row.get("caption_parse_error") is None
                  else f"no scores: {e(str(row['caption_parse_error']))}")
        if row.get("clip_score_caption") is not None:
            scores += f"<br>CLIP score: caption {row['clip_score_caption']:.3f}" + (
                f", text {row['clip_score_text']:.3f}" if row.get("clip_score_text") is not None else "")
        caption = row.get("caption") or ""
        caption = caption if len(caption) <= 300 else caption[:300] + "..."
        cards.append(f'<div class="card"><img alt="first frame of {e(row["sample_id"])}" '
                     f'src="data:image/jpeg;base64,{row["jpeg"]}"><b>{e(row["sample_id"])}</b> '
                     f'({row.get("frame_count", "?")} frames)<br>{scores}<br>{e(caption)}</div>')
    return '<div class="sheet">' + "\n".join(cards) + "</div>"


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _rate(value) -> str:
    return "n/a (counted by vLLM only)" if value is None else f"{value:,.0f}"


def _engine_table(engine: dict) -> str:
    """The captioner's figures for the run (`captioner.engine_summary`): vLLM's own token and
    prefix-cache counters, and the answers that parsed."""
    if not engine or not engine.get("answers"):
        return "<p>No sample reached the captioner.</p>"
    rows = [("answers that parsed", f"{engine['parsed']} of {engine['answers']} ({_share(engine['parsed_share'])})"),
            ("prefix-cache hit rate", _share(engine.get("prefix_cache_hit_rate"))),
            ("prompt tokens/s (inside generate)", _rate(engine.get("prompt_tokens_per_s"))),
            ("generated tokens/s (inside generate)", _rate(engine.get("generation_tokens_per_s"))),
            ("engine busy share (inside generate / wall from its first batch)", _share(engine.get("busy_share")))]
    return _table(rows, keys=True)


def _cluster(placement: dict, events: dict) -> str:
    """Where each stage ran (node, actors or tasks, rows) and what the cluster did meanwhile."""
    from etl.cluster_watch import placement_by_node

    e = html.escape
    rows = [(e(stage), e(node[:12]), workers["workers"], workers["rows"])
            for stage, nodes in placement_by_node(placement).items() for node, workers in sorted(nodes.items())]
    parts = [_table(rows, header=("stage", "node", "actors or tasks", "rows"), numeric=(2, 3)) if rows
             else "<p>No row reached the write stage.</p>"]
    for node in events.get("lost_nodes", []):
        died = time.strftime("%H:%M:%S", time.gmtime(node["died_at"])) if node.get("died_at") else "?"
        parts.append(f'<p class="failed">node {e(node["node_id"][:12])} was lost at {died} UTC: '
                     f'{e(str(node.get("reason") or "no reason given"))}</p>')
    for node in events.get("joined_nodes", []):
        parts.append(f"<p>node {e(node['node_id'][:12])} joined during the run: {e(str(node['resources']))}</p>")
    retried = [(e(t["work"]), e(str(t["node_id"])[:12]), e(str(t["error_type"])), t["attempts"])
               for t in events.get("retried_tasks", [])]
    retried += [(e(a["actor"]) + " (actor restarted)", e(str(a["node_id"])[:12]), "", a["restarts"])
                for a in events.get("restarted_actors", [])]
    if retried:
        parts.append(_table(retried, header=("work run again", "node", "cause", "times"), numeric=(3,)))
    if events.get("unknown"):
        parts.append(f"<p>Retried work unknown: {e(events['unknown'])}</p>")
    return "".join(parts)


def _table(rows: list[tuple], header: tuple = (), numeric: tuple = (), keys: bool = False) -> str:
    """An HTML table of cells that are HTML already: `numeric` columns right-aligned, the first
    column as row headings with `keys`."""
    def cell(i: int, value) -> str:
        if keys and i == 0:
            return f"<th>{value}</th>"
        return f"<td class=n>{value}</td>" if i in numeric else f"<td>{value}</td>"

    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:g}"


def write_report(summary, config) -> str:
    """Render and write the report of `summary`'s run under `config.output`; returns its URI."""
    import yaml

    from etl import storage

    models = {"captioner": f"{config.models.captioner.model} ({config.models.captioner.backend})",
              "embedder": config.models.embedder.model, "vae": config.models.vae.model}
    page = render(summary, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), models).encode()
    for name in (f"reports/{summary.run_id}.html", "report.html"):
        uri = storage.join(config.output, name)
        fs, path = storage.resolve(uri)
        storage.write_file(fs, path, page)
    return storage.join(config.output, "report.html")
