"""The starters ``claudecluster init --template`` writes: a plan, a fan-out, a CI workflow.

Text only, no I/O: ``init`` writes them. The CI starter is the documented workflow of
docs/examples/claudecluster-workflow.yml (a test checks the two are the same text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["CI_WORKFLOW_PATH", "Starter", "starter_files"]

#: Where the CI starter goes in the project.
CI_WORKFLOW_PATH: Final = ".github/workflows/claudecluster.yml"


@dataclass(frozen=True, slots=True)
class Starter:
    """One file a template writes and what to do with it next."""

    text: str
    next_step: str
    executable: bool = False


_PLAN: Final = """\
# A starter plan (guide: docs/driver.md#plan-files). Edit the tasks, then:
#   claudecluster run "Add type hints" --plan plan.yaml --dry-run   # see the preview
#   claudecluster run "Add type hints" --plan plan.yaml             # run it
# A task needs an id and a prompt; its title defaults to the id.
# depends_on orders tasks; files says what a task will change, so the preview and the
# driver can keep tasks that touch the same files apart; limits override the defaults
# of claudecluster.yaml's limits section for one task.
goal: Add type hints
tasks:
  - id: core
    prompt: Add precise type hints to the core module; keep behaviour unchanged.
    files: [src/]
    size: medium
  - id: tests
    title: Type-check in the tests
    prompt: Add a type-checking step to the test suite and fix what it finds.
    kind: test
    depends_on: [core]
    size: small
    limits: {max_turns: 40}
  - id: review
    prompt: Review the new type hints for Any, casts and ignores that hide real problems.
    kind: review
    depends_on: [tests]
    size: small
"""

_FANOUT: Final = """\
#!/bin/sh
# A starter fan-out (docs/cli.md#run): one task per file matching the glob, each with
# the prompt below ({path}, {stem} and {goal} are filled in). Edit, then run ./fanout.sh
# (add --dry-run to see the tasks first). Exit codes are run's: 0 every task merged.
set -eu
exec claudecluster run "Add docstrings to every module" \\
    --fanout "src/**/*.py" \\
    --prompt "Add Google-style docstrings to {path}; change no behaviour." \\
    --kind docs \\
    "$@"
"""

_CI: Final = """\
# A GitHub Actions workflow that runs a ClaudeCluster goal and opens the pull request
# (docs/examples/README.md explains it; `claudecluster init --template ci` writes this file
# to .github/workflows/claudecluster.yml). Start it from the Actions tab with a goal.
# Every step relies on exit codes: doctor exits 1 when something blocks a run; run exits 0
# when every task merged, 1 when the run failed or some task did not merge, 2 on a usage
# or configuration error. A non-zero exit fails the job, so a partial result is never
# proposed silently.
name: claudecluster

on:
  workflow_dispatch:
    inputs:
      goal:
        description: What the run should achieve, in a sentence
        required: true
      plan:
        description: A plan file in the repository (empty - Claude Code plans the goal)
        required: false
        default: ""

permissions:
  contents: write        # push the run's branch
  pull-requests: write   # open the pull request

jobs:
  run:
    runs-on: ubuntu-latest
    timeout-minutes: 90
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0   # the run's branch starts from this commit
      - uses: actions/setup-python@v5
        with:
          python-version: "3.12"
      - name: Install ClaudeCluster (brings its nats-server and the Claude Code CLI)
        # The repository variable CLAUDECLUSTER_SOURCE says where from: a git URL
        # (git+https://...), or a wheel's URL. Refuse to guess a package name.
        run: |
          if [ -z "$CLAUDECLUSTER_SOURCE" ]; then
            echo "set the repository variable CLAUDECLUSTER_SOURCE" >&2; exit 2
          fi
          pipx install "$CLAUDECLUSTER_SOURCE"
        env:
          CLAUDECLUSTER_SOURCE: ${{ vars.CLAUDECLUSTER_SOURCE }}
      - name: Check the machine (exit 1 blocks the job)
        run: claudecluster doctor
        env:
          ANTHROPIC_API_KEY: ${{ secrets.ANTHROPIC_API_KEY }}
      - name: Run the goal, push its branch, open the pull request
        run: |
          git config user.name "claudecluster[bot]"
          git config user.email "claudecluster@users.noreply.github.com"
          plan=()
          if [ -n "$PLAN" ]; then plan=(--plan "$PLAN"); fi
          claudecluster run "$GOAL" "${plan[@]}" --run-id "ci-$GITHUB_RUN_ID" \\
            --yes --push origin --pr
        env:
          GOAL: ${{ inputs.goal }}
          PLAN: ${{ inputs.plan }}
          ANTHROPIC_API_KEY: ${{ secrets.ANTHROPIC_API_KEY }}
          GH_TOKEN: ${{ github.token }}
"""


def starter_files(template: str) -> dict[str, Starter]:
    """The files of ``template`` (plan, fanout or ci) by path relative to the project.

    Raises:
        KeyError: no such template (the CLI's choices keep this from happening).
    """
    return {
        "plan": {"plan.yaml": Starter(_PLAN, 'claudecluster run "Add type hints" '
                                      "--plan plan.yaml --dry-run")},
        "fanout": {"fanout.sh": Starter(_FANOUT, "./fanout.sh --dry-run", executable=True)},
        "ci": {CI_WORKFLOW_PATH: Starter(_CI, "commit it; set the CLAUDECLUSTER_SOURCE "
                                         "variable and the ANTHROPIC_API_KEY secret")},
    }[template]  # fmt: skip
