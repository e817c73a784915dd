"""A run's report: one record built from the log, rendered as JSON, Markdown or HTML.

The HTML is a single self-contained file (inline CSS and SVG, no scripts, no network):
a timeline of attempts per worker, the task graph in layers, a table of tasks with the
files they changed, cost and tokens, and the failures and conflicts.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any, Final

import msgspec

from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import (
    MergeConflict,
    RunCompleted,
    TaskCancelled,
    TaskFailed,
    TaskMerged,
    TaskPreempted,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.projections.cluster import ClusterView
from claudecluster.projections.progress import merge_warnings, run_progress
from claudecluster.reporting.timing import timing_line
from claudecluster.runtime.connection import Connection
from claudecluster.transport.artifacts import JetStreamArtifactStore

__all__ = ["OUTCOME_COLOURS", "fetch_diffstats", "render_html", "render_markdown", "run_record"]

OUTCOME_COLOURS: Final = {
    "succeeded": "#3a9d5d",
    "failed": "#d64545",
    "cancelled": "#999999",
    "running": "#4a90d9",
}


async def fetch_diffstats(
    conn: Connection, stored: list[StoredEvent], run_id: str
) -> dict[str, list[dict[str, Any]]]:
    """The files each task's merged attempt changed, from its diffstat artifact."""
    store = JetStreamArtifactStore(conn.client.jetstream())
    found: dict[str, list[dict[str, Any]]] = {}
    for event in stored:
        payload = event.envelope.payload
        if not isinstance(payload, TaskSucceeded) or payload.run_id != run_id:
            continue
        ref = next((a for a in payload.artifacts if a.name == "diffstat.json"), None)
        if ref is None:
            found[payload.task_id] = []
            continue
        data = msgspec.json.decode(await store.get(ref))
        found[payload.task_id] = list(data.get("files", []))
    return found


def run_record(
    view: ClusterView,
    stored: list[StoredEvent],
    run_id: str,
    diffstats: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain data (this is also the JSON export)."""
    run = view.runs[run_id]
    origin = run.submitted_at
    attempts: dict[tuple[str, int], dict[str, Any]] = {}
    problems: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    merged_files: dict[str, list[dict[str, Any]]] = {}
    #: attempts stopped early for a predicted collision (restart_later): not failures
    stopped: list[dict[str, Any]] = []
    for event in stored:
        payload = event.envelope.payload
        if getattr(payload, "run_id", None) != run_id:
            continue
        at = (event.envelope.occurred_at - origin).total_seconds()
        match payload:
            case TaskStarted():
                attempts[(payload.task_id, payload.attempt)] = {
                    "task": payload.task_id,
                    "attempt": payload.attempt,
                    "worker": payload.worker_id,
                    "start_s": at,
                    "end_s": None,
                    "outcome": "running",
                }
            case TaskSucceeded() | TaskFailed() | TaskCancelled():
                entry = attempts.get((payload.task_id, payload.attempt))
                if entry is not None:
                    entry["end_s"] = at
                    entry["outcome"] = {
                        TaskSucceeded: "succeeded",
                        TaskFailed: "failed",
                        TaskCancelled: "cancelled",
                    }[type(payload)]
                if isinstance(payload, TaskFailed):
                    problems.append(
                        {
                            "task": payload.task_id,
                            "attempt": payload.attempt,
                            "kind": f"failed ({payload.failure_class})",
                            "detail": payload.reason,
                        }
                    )
            case TaskPreempted():
                entry = attempts.get((payload.task_id, payload.attempt))
                if entry is not None:
                    entry["end_s"] = at
                    entry["outcome"] = "preempted"
                stopped.append(
                    {
                        "task": payload.task_id,
                        "attempt": payload.attempt,
                        "other": payload.other_task_id,
                        "files": list(payload.files),
                        "at_s": at,
                    }
                )
            case MergeConflict():
                problems.append(
                    {
                        "task": payload.task_id,
                        "attempt": payload.attempt,
                        "kind": "merge refused" if payload.problem else "merge conflict",
                        "detail": (
                            f"{payload.problem or ', '.join(payload.files)} "
                            f"(policy {payload.policy})"
                        ),
                    }
                )
            case TaskMerged():
                merged_files[payload.task_id] = [msgspec.structs.asdict(f) for f in payload.files]
            case RunCompleted():
                summary = msgspec.structs.asdict(payload)
            case _:
                pass
    progress = run_progress(view, run_id, run.finished_at or event_time(stored))
    tasks = []
    for task in view.tasks_of(run_id):
        tasks.append(
            {
                "id": task.task_id,
                "title": task.title,
                "kind": task.kind,
                "depends_on": list(task.depends_on),
                "state": task.state.value,
                "attempts": task.attempt,
                "worker": task.worker_id,
                "turns": task.turns,
                "cost_usd": round(task.cost_usd, 6),
                "tokens": msgspec.structs.asdict(task.usage),
                # What the merge changed; logs from before TaskMerged.files fall back to
                # the diffstat of the attempt's own workspace.
                "files": merged_files.get(task.task_id) or (diffstats or {}).get(task.task_id, []),
                "failure": task.failure,
                "preempted": task.preemptions,
            }
        )
    return {
        "run": {
            "id": run.run_id,
            "goal": run.goal,
            "state": run.state.value,
            "repo": run.repo,
            "branch": run.integration_branch,
            "base": run.base_commit,
            "head": run.head_commit,
            "submitted_at": run.submitted_at.isoformat(),
            "elapsed_s": progress.elapsed_s if progress else 0.0,
            "cost_usd": progress.cost_usd if progress else 0.0,
            "tokens": msgspec.structs.asdict(progress.usage) if progress else {},
            "reason": run.reason,
        },
        "summary": summary,
        "tasks": tasks,
        "attempts": sorted(attempts.values(), key=lambda a: (a["start_s"], a["task"])),
        "problems": problems,
        "preemptions": stopped,
        # Tasks counted as merged although their merge changed nothing: never silent.
        "warnings": [
            {"task": task_id, "detail": f"merged without changes: {why}"}
            for task_id, why in merge_warnings(view, run_id)
        ],
    }


def event_time(stored: list[StoredEvent]) -> datetime:
    """When the last event happened (the report's 'now' for an unfinished run)."""
    return stored[-1].envelope.occurred_at


def _timing(summary: dict[str, Any]) -> str:
    return timing_line(
        wall_time_s=summary["wall_time_s"],
        task_time_s=summary["task_time_s"],
        parallelism=summary["speedup"],
        model_time_s=summary.get("model_time_s", 0.0),
    )


def render_markdown(record: dict[str, Any]) -> str:
    """The report as Markdown."""
    run, summary = record["run"], record["summary"]
    lines = [
        f"# Run {run['id']}",
        "",
        f"**Goal:** {run['goal']}",
        "",
        f"- state: {run['state']}",
        f"- branch: `{run['branch']}` at `{run['head'][:12]}`",
        f"- elapsed: {run['elapsed_s']:.1f}s, cost ${run['cost_usd']:.4f}",
    ]
    if summary:
        lines.append(f"- {_timing(summary)}")
    lines += [
        "",
        "| task | state | attempts | worker | turns | cost | files |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in record["tasks"]:
        files = ", ".join(f["path"] for f in task["files"]) or "-"
        lines.append(
            f"| {task['id']} | {task['state']} | {task['attempts']} | "
            f"{task['worker'] or '-'} | {task['turns']} | ${task['cost_usd']:.4f} | {files} |"
        )
    if record.get("warnings"):
        lines += ["", "## Warnings", ""]
        lines += [f"- {w['task']}: {w['detail']}" for w in record["warnings"]]
    if record.get("preemptions"):
        lines += ["", "## Attempts stopped early", ""]
        lines += [_stopped_line(p) for p in record["preemptions"]]
    if record["problems"]:
        lines += ["", "## Failures and conflicts", ""]
        lines += [
            f"- {p['task']} (attempt {p['attempt']}): {p['kind']}: {p['detail']}"
            for p in record["problems"]
        ]
    return "\n".join(lines) + "\n"


def _stopped_line(stopped: dict[str, Any]) -> str:
    files = ", ".join(stopped["files"]) or "the same files"
    return (
        f"- {stopped['task']} (attempt {stopped['attempt']}): predicted to collide with "
        f"{stopped['other']} in {files}; stopped at {stopped['at_s']:.1f}s and run again on "
        f"top of its merge"
    )


def _timeline(record: dict[str, Any]) -> str:
    attempts = record["attempts"]
    if not attempts:
        return "<p>No attempt started.</p>"
    workers = sorted({a["worker"] for a in attempts})
    end = max((a["end_s"] or a["start_s"]) for a in attempts) or 1.0
    width, lane, left = 900, 28, 150
    scale = (width - left - 10) / end
    height = lane * len(workers) + 30
    parts = [
        f'<svg class="gantt" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="timeline">'
    ]
    for row, worker in enumerate(workers):
        y = row * lane + 4
        parts.append(f'<text x="4" y="{y + 17}">{html.escape(worker)}</text>')
        for attempt in (a for a in attempts if a["worker"] == worker):
            x = left + attempt["start_s"] * scale
            w = max(((attempt["end_s"] or end) - attempt["start_s"]) * scale, 2)
            colour = OUTCOME_COLOURS.get(attempt["outcome"], "#888")
            label = f"{attempt['task']}" + (
                f" #{attempt['attempt']}" if attempt["attempt"] > 1 else ""
            )
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane - 8}" rx="3" '
                f'fill="{colour}"><title>{html.escape(label)}: {attempt["outcome"]}, '
                f"{attempt['start_s']:.1f}s to {(attempt['end_s'] or end):.1f}s</title></rect>"
                f'<text x="{x + 4:.1f}" y="{y + 15}" class="bar">{html.escape(label)}</text>'
            )
    axis_y = lane * len(workers) + 20
    for tick in range(0, int(end) + 1, max(1, int(end // 8) or 1)):
        x = left + tick * scale
        parts.append(f'<text x="{x:.1f}" y="{axis_y}" class="tick">{tick}s</text>')
    parts.append("</svg>")
    return "".join(parts)


def _graph(record: dict[str, Any]) -> str:
    tasks = {t["id"]: t for t in record["tasks"]}
    depth: dict[str, int] = {}

    def level(task_id: str, seen: frozenset[str] = frozenset()) -> int:
        if task_id not in depth:
            deps = [d for d in tasks[task_id]["depends_on"] if d in tasks and d not in seen]
            depth[task_id] = 1 + max((level(d, seen | {task_id}) for d in deps), default=-1)
        return depth[task_id]

    for task_id in tasks:
        level(task_id)
    columns: dict[int, list[str]] = {}
    for task_id, d in depth.items():
        columns.setdefault(d, []).append(task_id)
    box_w, box_h, gap_x, gap_y = 130, 30, 50, 14
    pos = {
        t: (20 + d * (box_w + gap_x), 10 + i * (box_h + gap_y))
        for d, ids in columns.items()
        for i, t in enumerate(ids)
    }
    width = 40 + (max(columns) + 1) * (box_w + gap_x) if columns else 100
    height = 20 + max(len(v) for v in columns.values()) * (box_h + gap_y) if columns else 40
    parts = [
        f'<svg class="graph" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="task graph">'
    ]
    for task_id, task in tasks.items():
        for dep in task["depends_on"]:
            if dep in pos:
                x1, y1 = pos[dep][0] + box_w, pos[dep][1] + box_h / 2
                x2, y2 = pos[task_id][0], pos[task_id][1] + box_h / 2
                parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" class="edge"/>')
    for task_id, (x, y) in pos.items():
        state = tasks[task_id]["state"]
        colour = {"merged": "#3a9d5d", "failed": "#d64545", "skipped": "#bbbbbb"}.get(
            state, "#4a90d9"
        )
        parts.append(
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="5" fill="{colour}"/>'
            f'<text x="{x + 8}" y="{y + 20}" class="bar">{html.escape(task_id)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


_CSS: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.num{text-align:right}
svg text{font:12px system-ui,sans-serif;fill:#222}svg text.bar{fill:#fff}
svg text.tick{fill:#666;font-size:11px}.edge{stroke:#999;stroke-width:1.5}
.warnings{color:#8a5a00;background:#fff6e0;padding:.5rem 2rem}
.summary span{display:inline-block;margin-right:1.5rem}code{background:#f4f4f4;padding:0 3px}
"""


def render_html(record: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    run, summary = record["run"], record["summary"]
    esc = html.escape
    rows = []
    for task in record["tasks"]:
        files = (
            "<br>".join(
                f"{esc(f['path'])} <small>+{f.get('added') or 0}/-{f.get('deleted') or 0}</small>"
                for f in task["files"]
            )
            or "-"
        )
        tokens = task["tokens"]
        rows.append(
            f"<tr><td>{esc(task['id'])}</td><td>{esc(task['title'])}</td><td>{task['state']}</td>"
            f"<td class=num>{task['attempts']}</td><td>{esc(task['worker'] or '-')}</td>"
            f"<td class=num>{task['turns']}</td><td class=num>${task['cost_usd']:.4f}</td>"
            f"<td class=num>{tokens.get('input_tokens', 0)}/{tokens.get('output_tokens', 0)}</td>"
            f"<td>{files}</td></tr>"
        )
    problems = (
        "".join(
            f"<tr><td>{esc(p['task'])}</td><td class=num>{p['attempt']}</td>"
            f"<td>{esc(p['kind'])}</td><td>{esc(p['detail'])}</td></tr>"
            for p in record["problems"]
        )
        or "<tr><td colspan=4>None.</td></tr>"
    )
    warnings = "".join(
        f"<li><b>{esc(w['task'])}</b>: {esc(w['detail'])}</li>" for w in record.get("warnings", [])
    )
    warned = f'<h2>Warnings</h2><ul class="warnings">{warnings}</ul>' if warnings else ""
    stopped = "".join(
        f"<li>{esc(_stopped_line(p).removeprefix('- '))}</li>"
        for p in record.get("preemptions", [])
    )
    if stopped:
        warned += f"<h2>Attempts stopped early</h2><ul>{stopped}</ul>"
    speed = (
        (
            f"<span>parallelism <b>{summary['speedup']:.2f}x</b></span>"
            f"<span>task time {summary['task_time_s']:.1f}s</span>"
            f"<span>{esc(_timing(summary))}</span>"
        )
        if summary
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Run {esc(run["id"])}</title>
<style>{_CSS}</style></head><body>
<h1>Run {esc(run["id"])}: {esc(run["goal"])}</h1>
<p class="summary"><span>state <b>{run["state"]}</b></span>
<span>elapsed {run["elapsed_s"]:.1f}s</span>{speed}
<span>cost ${run["cost_usd"]:.4f}</span>
<span>branch <code>{esc(run["branch"])}</code> at <code>{esc(run["head"][:12])}</code></span></p>
{f"<p>{esc(run['reason'])}</p>" if run["reason"] else ""}
{warned}
<h2>Timeline</h2>{_timeline(record)}
<h2>Task graph</h2>{_graph(record)}
<h2>Tasks</h2>
<table><tr><th>task</th><th>title</th><th>state</th><th>attempts</th><th>worker</th><th>turns</th>
<th>cost</th><th>tokens in/out</th><th>files changed</th></tr>{"".join(rows)}</table>
<h2>Failures and conflicts</h2>
<table><tr><th>task</th><th>attempt</th><th>what</th><th>detail</th></tr>{problems}</table>
</body></html>
"""
