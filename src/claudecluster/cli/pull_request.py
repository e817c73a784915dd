"""``run --push REMOTE --pr``: open a GitHub pull request for the pushed branch.

One call of GitHub's REST API (``POST /repos/OWNER/NAME/pulls``), made with httpx from
this command after the push; the token comes from GH_TOKEN or GITHUB_TOKEN (never from
configuration, never printed), the API base from ``github.api_url`` so a GitHub
Enterprise server works the same. What the pull request says is a pure function of the
run's projection (:func:`pull_request_body`), so it is tested without a network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from claudecluster.errors import ConfigError
from claudecluster.events.model import RunCompleted
from claudecluster.projections.cluster import ClusterView
from claudecluster.projections.views import task_key

__all__ = ["PullRequest", "github_token", "open_pull_request", "pull_request_body", "repository_of"]

_TOKEN_VARIABLES: Final = ("GH_TOKEN", "GITHUB_TOKEN")
#: OWNER/NAME at the end of an https or scp-like GitHub remote URL.
_OWNER_NAME: Final = re.compile(
    r"[/:](?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(?:\.git)?/?$"
)
_API_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class PullRequest:
    """An opened pull request: its web address and number."""

    url: str
    number: int


def github_token(environ: Mapping[str, str]) -> str:
    """The token ``--pr`` uses: GH_TOKEN, else GITHUB_TOKEN.

    Raises:
        ConfigError: neither is set (checked before the run starts).
    """
    for name in _TOKEN_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value
    raise ConfigError(
        "pr", "flag --pr", "needs a GitHub token in GH_TOKEN or GITHUB_TOKEN (repo scope)"
    )


def repository_of(remote_url: str, configured: str | None) -> str:
    """OWNER/NAME of the pull request's repository: configured, else from the remote URL.

    Raises:
        ConfigError: neither names one.
    """
    if configured:
        return configured
    found = _OWNER_NAME.search(remote_url.strip())
    if found is None:
        raise ConfigError(
            "github.repository", remote_url,
            "cannot tell OWNER/NAME from the remote's URL; set github.repository",
        )  # fmt: skip
    return f"{found['owner']}/{found['name']}"


def pull_request_body(view: ClusterView, event: RunCompleted) -> tuple[str, str]:
    """The pull request's title and Markdown body: goal, tasks, cost, the report."""
    run = view.runs.get(event.run_id)
    goal = run.goal if run is not None else event.run_id
    lines = [
        f"ClaudeCluster run `{event.run_id}`: {goal}",
        "",
        f"{event.tasks_succeeded} merged, {event.tasks_failed} failed, "
        f"{event.tasks_skipped} skipped; wall time {event.wall_time_s:.1f}s; "
        f"cost ${event.cost_usd:.4f}.",
        "",
        "| task | state | attempts | cost |",
        "| --- | --- | --- | --- |",
    ]
    for task_id in run.task_ids if run is not None else ():
        task = view.tasks.get(task_key(event.run_id, task_id))
        if task is None:
            continue
        title = task.title.replace("|", "\\|")
        lines.append(
            f"| `{task_id}` {title} | {task.state.value} | {task.attempt} | ${task.cost_usd:.4f} |"
        )
    lines += [
        "",
        f"The full report: `claudecluster export {event.run_id} --format html` on the "
        "machine that ran it.",
    ]
    return f"{goal} ({event.run_id})", "\n".join(lines) + "\n"


async def open_pull_request(
    *,
    api_url: str,
    token: str,
    repository: str,
    head: str,
    base: str,
    title: str,
    body: str,
) -> PullRequest | str:
    """Open the pull request of ``head`` into ``base``; the pull request, or why not.

    A refusal (a bad token, no such repository, a pull request for the branch already
    open) or an unreachable API is an answer for the user, not a crash: the branch is
    pushed already and the pull request can be opened by hand.
    """
    address = f"{api_url.rstrip('/')}/repos/{repository}/pulls"
    headers = {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {token}",
        "X-GitHub-Api-Version": "2022-11-28",
        "User-Agent": "claudecluster",
    }
    payload = {"title": title, "head": head, "base": base, "body": body}
    try:
        async with httpx.AsyncClient(timeout=_API_TIMEOUT_S) as client:
            answer = await client.post(address, json=payload, headers=headers)
    except httpx.HTTPError as error:
        return f"cannot reach {api_url}: {error}"
    if answer.status_code != 201:
        try:
            message = str(answer.json().get("message", answer.text))
        except ValueError:
            message = answer.text[:200]
        return f"GitHub answered {answer.status_code}: {message}"
    opened = answer.json()
    return PullRequest(url=str(opened["html_url"]), number=int(opened["number"]))
