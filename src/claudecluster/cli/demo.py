"""``claudecluster demo``: the README's main command, offline and with no API key.

It makes a small sample repository, starts the scripted Messages API in this process
(with a per-turn latency, so the parallelism shows), and runs a goal of eight tasks with
dependencies on three local workers: the real driver, real workers, the real Claude Code
CLI, the embedded nats-server (or the configured one). Two of the tasks edit the same
lines of the changelog; the merge conflicts and a resolution attempt merges both sides.
It ends with the summary, the speedup, the branch to look at, and an HTML report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_FAILED, EXIT_OK, flag_settings, log_quietly
from claudecluster.cli.follow import RunEnd, follow_run, renderer_for
from claudecluster.cli.run_cmd import print_summary
from claudecluster.events.model import RunCompleted, SubmitRun, TaskSpec
from claudecluster.observability.redaction import redact_url
from claudecluster.projections.cluster import replay
from claudecluster.reporting import fetch_diffstats, render_html, run_record
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.runtime.front_door import new_run_id
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.runtime.sandboxing import NO_SANDBOX_NOTE, confinement_for
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.settings import Settings
from claudecluster.transport.base import read_all
from claudecluster.workspace.git import git

__all__ = ["DEMO_SCRIPT", "DEMO_TASKS", "demo"]

_LATENCY_S = 1.0
_BASE_FILES = {
    "README.md": "# inventory\n\nA tiny inventory service.\n",
    "CHANGELOG.md": "# Changelog\n\n## Unreleased\n",
    "app/__init__.py": "",
}


def _task(task_id: str, title: str, *deps: str, kind: str = "generate") -> TaskSpec:
    return TaskSpec(
        task_id=task_id,
        title=title,
        prompt=f"[[demo:{task_id}]] {title} in the inventory service.",
        depends_on=deps,
        kind=kind,  # type: ignore[arg-type]
    )


DEMO_TASKS = (
    _task("models", "Define the Item and Stock models"),
    _task("store", "Add an in-memory store for stock levels", "models"),
    _task("api", "Add the HTTP API", "models"),
    _task("cli", "Add the command line", "models"),
    _task("tests", "Test the store and the API", "store", "api", kind="test"),
    _task("docs", "Document the API and the command line", "api", "cli"),
    # These two edit the same line of CHANGELOG.md: the second to merge conflicts.
    _task("note-api", "Note the HTTP API in the changelog", kind="refactor"),
    _task("note-cli", "Note the command line in the changelog", kind="refactor"),
)


def _writes(path: str, content: str, done: str) -> list[dict[str, Any]]:
    tool = {"name": "Write", "input": {"file_path": "{cwd}/" + path, "content": content}}
    return [{"text": f"Writing {path}.", "tools": [tool]}, {"text": done}]


_CHANGELOG = "# Changelog\n\n## Unreleased\n"
DEMO_SCRIPT = Script.model_validate(
    {
        "latency_s": _LATENCY_S,
        "tasks": [
            {   # a resolution attempt's prompt names the conflicting file: it goes first
                "marker": "conflicted in CHANGELOG.md",
                "turns": _writes(
                    "CHANGELOG.md",
                    _CHANGELOG + "- Added the HTTP API.\n- Added the command line.\n",
                    "Kept both entries and removed the conflict markers.",
                ),
            },
            {"marker": "[[demo:models]]", "turns": _writes(
                "app/models.py",
                "from dataclasses import dataclass\n\n\n@dataclass(frozen=True)\nclass Item:\n"
                "    sku: str\n    name: str\n\n\n@dataclass\nclass Stock:\n    item: Item\n"
                "    count: int = 0\n", "Added Item and Stock.")},
            {"marker": "[[demo:store]]", "turns": _writes(
                "app/store.py",
                "from app.models import Item, Stock\n\n\nclass Store:\n    def __init__(self):\n"
                "        self.stock: dict[str, Stock] = {}\n\n    def add(self, item: Item, n: int)"
                " -> None:\n        self.stock.setdefault(item.sku, Stock(item)).count += n\n",
                "Added the store.")},
            {"marker": "[[demo:api]]", "turns": _writes(
                "app/api.py",
                "from app.store import Store\n\nSTORE = Store()\n\n\n"
                "def get_stock(sku: str) -> int:\n    stock = STORE.stock.get(sku)\n"
                "    return stock.count if stock else 0\n",
                "Added the API.")},
            {"marker": "[[demo:cli]]", "turns": _writes(
                "app/cli.py",
                "import sys\n\nfrom app.api import get_stock\n\n\ndef main() -> None:\n"
                "    print(get_stock(sys.argv[1]))\n", "Added the command line.")},
            {"marker": "[[demo:tests]]", "turns": _writes(
                "tests/test_store.py",
                "from app.models import Item\nfrom app.store import Store\n\n\ndef test_add() -> "
                "None:\n    store = Store()\n    store.add(Item('a', 'A'), 2)\n"
                "    assert store.stock['a'].count == 2\n", "Added a test.")},
            {"marker": "[[demo:docs]]", "turns": _writes(
                "docs/usage.md",
                "# Usage\n\n`python -m app.cli SKU` prints the stock of SKU.\n",
                "Documented the API and the command line.")},
            {"marker": "[[demo:note-api]]", "turns": _writes(
                "CHANGELOG.md", _CHANGELOG + "- Added the HTTP API.\n", "Noted the API.")},
            {"marker": "[[demo:note-cli]]", "turns": _writes(
                "CHANGELOG.md", _CHANGELOG + "- Added the command line.\n", "Noted the CLI.")},
        ],
    }
)  # fmt: skip


def demo(
    *,
    config: Path | None = None,
    nats_url: str | None = None,
    json: bool = False,
    no_sandbox: bool = False,
) -> int:
    """Run a real goal offline: 8 tasks, 3 workers, the Claude Code CLI on a scripted model.

    Needs no API key and no network: a scripted Messages API answers Claude Code. Makes a
    sample repository under .claudecluster/demo/, starts the embedded nats-server (or uses
    --nats-url), a driver and three workers in this process, and runs a goal whose tasks
    depend on each other; two of them conflict and the conflict is resolved. Ends with the
    summary, the speedup and the branch holding the result, and writes the HTML report.

    Examples:
        claudecluster demo
        claudecluster demo --json > events.jsonl

    Args:
        config: A claudecluster.yaml to read instead of the one in this directory.
        nats_url: Use this NATS server instead of starting the embedded one.
        json: Print every event of the run as JSON Lines instead of progress.
        no_sandbox: Run the agents unconfined, as this user (``make demo`` passes it
            where bubblewrap is missing and cannot be installed, and says so).
    """
    settings = flag_settings(config, nats=nats_url, no_sandbox=no_sandbox)
    log_quietly(settings)
    console = Console(highlight=False, stderr=json)
    confinement_for(settings)  # refuse before anything starts, with what to do instead
    console.print(
        "agents confined by bubblewrap and a cgroup each"
        if settings.sandbox.enabled
        else f"UNCONFINED: {NO_SANDBOX_NOTE}",
        markup=False,
    )
    end, repo = anyio.run(_demo, settings, console, json)
    print_summary(console, end)
    ok = isinstance(end.event, RunCompleted) and end.event.tasks_succeeded == len(DEMO_TASKS)
    console.print(f"the sample repository is {repo}", markup=False, soft_wrap=True)
    console.print(f"the report is {repo.parent / 'report.html'}", markup=False, soft_wrap=True)
    return EXIT_OK if ok else EXIT_FAILED


async def _demo(settings: Settings, console: Console, json: bool) -> tuple[RunEnd, Path]:
    run_id = new_run_id(datetime.now(UTC), prefix="demo")
    project = Path.cwd()
    async with open_configured_cluster(settings, project_dir=project, name="demo") as conn:
        repo = await _sample_repo(project / ".claudecluster" / "demo" / run_id / "repo")
        if not json:
            console.print(f"cluster at {redact_url(conn.url)}", markup=False)
            console.print(f"sample repository {repo}", markup=False, soft_wrap=True)
        async with open_scripted_model(DEMO_SCRIPT) as model:
            api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-demo-offline"}
            async with open_local_services(
                conn, settings, workers=3, project_dir=project, api_environment=api
            ):
                command = SubmitRun(
                    run_id=run_id, goal="Build a tiny inventory service", repo=str(repo),
                    plan=DEMO_TASKS, planner="inline",
                )  # fmt: skip
                renderer = renderer_for(console, run_id, json=json)
                end = await follow_run(conn, command, renderer, command_id=f"submit-{run_id}")
        stored = await read_all(conn.log)
        record = run_record(
            replay(stored), stored, run_id, await fetch_diffstats(conn, stored, run_id)
        )
        report = repo.parent / "report.html"
        await anyio.Path(report).write_text(render_html(record), encoding="utf-8")
    return end, repo


async def _sample_repo(where: Path) -> Path:
    await anyio.Path(where).mkdir(parents=True, exist_ok=True)
    await git(where, "init", "--quiet", "--initial-branch", "main")
    for name, content in _BASE_FILES.items():
        path = anyio.Path(where / name)
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.write_text(content, encoding="utf-8")
    await git(where, "add", "--all")
    await git(where, "commit", "--quiet", "-m", "The inventory service, before the run")
    return where
