"""Planning strategies without a cluster: ids from paths, JSON in answers, fan-out over a
real git repository, and the Claude planner's feedback loop on a scripted executor."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from claudecluster.domain.outcome import Outcome
from claudecluster.errors import GraphError
from claudecluster.events.model import ID_PATTERN, FanoutSpec, RunSubmitted, TaskSpec
from claudecluster.executors.base import AttemptRun, ProgressSink
from claudecluster.runtime.planners import (
    PlanningAgent,
    extract_json,
    fanout_tasks,
    task_id_for,
)
from tests.support import git_output, make_repo

# ----------------------------------------------------------------------------------------
# task_id_for
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("src/app.py", "src-app-py"),
        ("pkg/sub dir/módulo.rs", "pkg-sub-dir-m-dulo-rs"),
        ("_private/.hidden", "private-hidden"),
        ("--x--", "x"),
        ("/", "file"),
        ("___", "file"),
        ("a_b-c", "a_b-c"),
    ],
)
def test_task_id_for_sanitises_a_path(path: str, expected: str) -> None:
    assert task_id_for(path, set()) == expected


def test_task_id_for_keeps_ids_unique_with_numbered_suffixes() -> None:
    taken: set[str] = set()
    ids = [task_id_for(p, taken) for p in ["src/a.py", "src-a.py", "src_a.py", "src/a/py"]]
    assert ids == ["src-a-py", "src-a-py-2", "src_a-py", "src-a-py-3"]
    assert taken == set(ids)


def test_task_id_for_avoids_ids_already_taken() -> None:
    taken = {"app-py", "app-py-2"}
    assert task_id_for("app.py", taken) == "app-py-3"
    assert "app-py-3" in taken


@pytest.mark.parametrize(
    "path",
    [
        "a" * 200,
        "/".join(["deeply", "nested"] * 30) + "/file.py",
        "_" + "x" * 80,
        "-" * 10 + "y" * 70,
        "ü" * 70,
        ".github/workflows/ci.yml",
    ],
)
def test_task_ids_are_valid_subject_tokens_even_for_long_or_odd_paths(path: str) -> None:
    taken: set[str] = set()
    ids = [task_id_for(path, taken) for _ in range(12)]
    assert len(set(ids)) == 12
    for task_id in ids:
        assert len(task_id) <= 64
        assert task_id[0] not in "_-"
        assert re.fullmatch(ID_PATTERN, task_id), task_id


# ----------------------------------------------------------------------------------------
# extract_json
# ----------------------------------------------------------------------------------------


def test_extract_json_reads_a_fenced_json_block() -> None:
    text = 'Here it is:\n```json\n{"tasks": [{"id": "a"}]}\n```\nDone {not json}.'
    assert extract_json(text) == {"tasks": [{"id": "a"}]}


def test_extract_json_reads_an_unlabelled_fence() -> None:
    assert extract_json('```\n{"a": 1}\n```') == {"a": 1}


def test_extract_json_reads_the_outermost_braces_in_prose() -> None:
    text = 'I propose {"goal": "g", "tasks": [{"id": "a", "limits": {}}]} as the plan.'
    assert extract_json(text) == {"goal": "g", "tasks": [{"id": "a", "limits": {}}]}


@pytest.mark.parametrize("text", ["", "no plan here", "} backwards {", "only {"])
def test_extract_json_without_an_object_raises(text: str) -> None:
    with pytest.raises(GraphError, match=r"^the answer holds no JSON object$"):
        extract_json(text)


def test_extract_json_names_the_parse_problem() -> None:
    with pytest.raises(GraphError) as caught:
        extract_json('```json\n{"a": 1,\n "b": }\n```')
    assert str(caught.value) == ("the answer's JSON does not parse: Expecting value at line 2")


# ----------------------------------------------------------------------------------------
# fanout_tasks
# ----------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo",
        {
            "a.py": "A = 1\n",
            "pkg/b.py": "B = 2\n",
            "pkg/sub/c.py": "C = 3\n",
            "README.md": "# readme\n",
        },
    )


def _head(repo: Path) -> str:
    return git_output(repo, "rev-parse", "HEAD").strip()


async def test_fanout_makes_one_task_per_matching_file_at_any_depth(repo: Path) -> None:
    fanout = FanoutSpec(glob="**/*.py", prompt_template="In {path} ({stem}): {goal}")
    tasks = await fanout_tasks(repo, _head(repo), fanout, "add hints")
    assert tasks == [
        TaskSpec(
            task_id="a-py",
            title="refactor a.py",
            prompt="In a.py (a): add hints",
            kind="refactor",
            files=("a.py",),
        ),
        TaskSpec(
            task_id="pkg-b-py",
            title="refactor pkg/b.py",
            prompt="In pkg/b.py (b): add hints",
            kind="refactor",
            files=("pkg/b.py",),
        ),
        TaskSpec(
            task_id="pkg-sub-c-py",
            title="refactor pkg/sub/c.py",
            prompt="In pkg/sub/c.py (c): add hints",
            kind="refactor",
            files=("pkg/sub/c.py",),
        ),
    ]


async def test_fanout_uses_the_given_kind_and_literal_doubled_braces(repo: Path) -> None:
    fanout = FanoutSpec(glob="*.md", prompt_template="Review {path} {{as is}}", kind="review")
    (task,) = await fanout_tasks(repo, _head(repo), fanout, "g")
    assert task.prompt == "Review README.md {as is}"
    assert task.kind == "review"
    assert task.title == "review README.md"


async def test_fanout_lists_the_commit_not_the_working_tree(repo: Path) -> None:
    base = _head(repo)
    (repo / "new.py").write_text("N = 0\n")
    tasks = await fanout_tasks(repo, base, FanoutSpec(glob="*.py", prompt_template="{path}"), "")
    assert "new.py" not in {t.files[0] for t in tasks}


@pytest.mark.parametrize("template", ["Fix {file}", "Fix {0}", "Fix {path"])
async def test_fanout_with_a_bad_template_placeholder_raises(repo: Path, template: str) -> None:
    fanout = FanoutSpec(glob="**/*.py", prompt_template=template)
    with pytest.raises(GraphError, match="the prompt template cannot be filled") as caught:
        await fanout_tasks(repo, _head(repo), fanout, "g")
    assert "{path}, {stem} and {goal}" in str(caught.value)


@pytest.mark.parametrize(("glob", "template"), [("", "x {path}"), ("*.py", "  ")])
async def test_fanout_needs_a_glob_and_a_template(repo: Path, glob: str, template: str) -> None:
    with pytest.raises(GraphError, match="both a glob and a prompt template are needed"):
        await fanout_tasks(repo, _head(repo), FanoutSpec(glob=glob, prompt_template=template), "")


async def test_fanout_without_a_match_raises(repo: Path) -> None:
    head = _head(repo)
    fanout = FanoutSpec(glob="**/*.rs", prompt_template="{path}")
    with pytest.raises(GraphError) as caught:
        await fanout_tasks(repo, head, fanout, "g")
    assert str(caught.value) == f"fan-out: no file of {head[:12]} matches '**/*.rs'"


async def test_fanout_over_the_limit_raises(repo: Path) -> None:
    fanout = FanoutSpec(glob="**/*.py", prompt_template="{path}", max_tasks=2)
    with pytest.raises(GraphError) as caught:
        await fanout_tasks(repo, _head(repo), fanout, "g")
    assert str(caught.value) == (
        "fan-out: 3 files match '**/*.py', more than the limit of 2; "
        "narrow the glob or raise max_tasks"
    )


async def test_fanout_at_the_limit_is_fine(repo: Path) -> None:
    fanout = FanoutSpec(glob="**/*.py", prompt_template="{path}", max_tasks=3)
    assert len(await fanout_tasks(repo, _head(repo), fanout, "g")) == 3


# ----------------------------------------------------------------------------------------
# PlanningAgent on a scripted executor
# ----------------------------------------------------------------------------------------

CYCLIC = {
    "tasks": [
        {"id": "a", "prompt": "do a", "depends_on": ["b"]},
        {"id": "b", "prompt": "do b", "depends_on": ["a"]},
    ]
}
GOOD = {
    "goal": "split",
    "tasks": [
        {"id": "models", "prompt": "Move the models", "kind": "refactor", "files": ["app.py"]},
        {"id": "tests", "prompt": "Test them", "kind": "test", "depends_on": ["models"]},
    ],
}
GOOD_SPECS = [
    TaskSpec(
        task_id="models",
        title="models",
        prompt="Move the models",
        kind="refactor",
        files=("app.py",),
    ),
    TaskSpec(
        task_id="tests", title="tests", prompt="Test them", kind="test", depends_on=("models",)
    ),
]
CYCLE_PROBLEM = "invalid task graph: the dependencies form a cycle: a -> b -> a"


def _answer(plan: dict[str, Any]) -> Outcome:
    return Outcome(succeeded=True, summary="Plan:\n```json\n" + json.dumps(plan) + "\n```")


class ScriptedExecutor:
    """Answers each run with the next scripted outcome and remembers the jobs."""

    def __init__(self, *outcomes: Outcome) -> None:
        self._outcomes = list(outcomes)
        self.jobs: list[AttemptRun] = []

    @property
    def prompts(self) -> list[str]:
        return [job.prompt for job in self.jobs]

    async def run(self, job: AttemptRun, on_progress: ProgressSink) -> Outcome:
        self.jobs.append(job)
        return self._outcomes.pop(0)


SUBMITTED = RunSubmitted(run_id="r1", goal="Split app.py into modules", repo="/srv/repo")


def _planner(executor: ScriptedExecutor, tmp_path: Path) -> PlanningAgent:
    return PlanningAgent(executor, tmp_path / "scratch", {"ANTHROPIC_API_KEY": "sk-test"})


async def test_a_valid_first_answer_is_returned_from_a_read_only_job(tmp_path: Path) -> None:
    executor = ScriptedExecutor(_answer(GOOD))
    tasks = await _planner(executor, tmp_path).plan(SUBMITTED, tmp_path / "checkout")
    assert tasks == GOOD_SPECS
    (job,) = executor.jobs
    assert job.allowed_tools == ("Read", "Glob", "Grep")
    assert job.permission_mode == "default"
    assert (job.run_id, job.task_id, job.attempt) == ("r1", "_plan", 1)
    assert job.workspace == tmp_path / "checkout"
    assert job.scratch == tmp_path / "scratch" / "plan-1"
    assert job.api_environment == {"ANTHROPIC_API_KEY": "sk-test"}
    assert "Split app.py into modules" in job.prompt
    assert "was not a valid plan" not in job.prompt


async def test_an_invalid_answer_is_sent_back_with_its_problem(tmp_path: Path) -> None:
    executor = ScriptedExecutor(_answer(CYCLIC), _answer(GOOD))
    tasks = await _planner(executor, tmp_path).plan(SUBMITTED, tmp_path)
    assert tasks == GOOD_SPECS
    first, second = executor.prompts
    assert "was not a valid plan" not in first
    assert second.startswith(first)
    assert f"Your previous answer was not a valid plan: {CYCLE_PROBLEM}\n" in second
    assert [job.attempt for job in executor.jobs] == [1, 2]
    assert all(job.allowed_tools == ("Read", "Glob", "Grep") for job in executor.jobs)
    assert len({job.session_id for job in executor.jobs}) == 2


async def test_the_full_result_text_is_preferred_to_the_summary(tmp_path: Path) -> None:
    answer = Outcome(succeeded=True, summary="Plan:", result_text=json.dumps(GOOD))
    tasks = await _planner(ScriptedExecutor(answer), tmp_path).plan(SUBMITTED, tmp_path)
    assert tasks == GOOD_SPECS


async def test_three_invalid_answers_fail_naming_the_last_problem(tmp_path: Path) -> None:
    executor = ScriptedExecutor(
        Outcome(succeeded=True, summary="I could not decide."),
        _answer({"tasks": [{"id": "a"}]}),
        _answer(CYCLIC),
    )
    with pytest.raises(GraphError) as caught:
        await _planner(executor, tmp_path).plan(SUBMITTED, tmp_path)
    assert str(caught.value) == f"the Claude planner gave no valid plan: {CYCLE_PROBLEM}"
    assert len(executor.jobs) == 3
    assert "not a valid plan: the answer holds no JSON object\n" in executor.prompts[1]
    assert (
        "not a valid plan: the plan: tasks[0]: Object missing required field `prompt`\n"
        in executor.prompts[2]
    )


async def test_a_retryable_failure_is_asked_again(tmp_path: Path) -> None:
    executor = ScriptedExecutor(
        Outcome(succeeded=False, reason="overloaded", retryable=True), _answer(GOOD)
    )
    assert await _planner(executor, tmp_path).plan(SUBMITTED, tmp_path) == GOOD_SPECS
    assert "not a valid plan: the planning agent failed: overloaded\n" in executor.prompts[1]


async def test_a_non_retryable_failure_stops_at_once(tmp_path: Path) -> None:
    executor = ScriptedExecutor(
        Outcome(succeeded=False, reason="invalid API key", failure_class="auth"),
        _answer(GOOD),
    )
    with pytest.raises(GraphError) as caught:
        await _planner(executor, tmp_path).plan(SUBMITTED, tmp_path)
    assert str(caught.value) == (
        "the Claude planner gave no valid plan: the planning agent failed: invalid API key"
    )
    assert len(executor.jobs) == 1


async def test_the_number_of_attempts_is_configurable(tmp_path: Path) -> None:
    executor = ScriptedExecutor(_answer(CYCLIC), _answer(GOOD))
    planner = PlanningAgent(executor, tmp_path, {}, attempts=1)
    with pytest.raises(GraphError, match="gave no valid plan: invalid task graph"):
        await planner.plan(SUBMITTED, tmp_path)
    assert len(executor.jobs) == 1


async def test_a_planner_cannot_grant_its_tasks_network_access(tmp_path: Path) -> None:
    """The planning agent reads text anyone may have put in the repository: a plan it
    makes that lets a task reach the network is sent back, as any invalid answer is."""
    opened = {
        "network": {"allow": ["evil.example:443"]},
        "tasks": [{"id": "a", "prompt": "do a"}],
    }
    executor = ScriptedExecutor(_answer(opened), _answer(GOOD))
    tasks = await _planner(executor, tmp_path).plan(SUBMITTED, tmp_path)
    assert tasks == GOOD_SPECS
    assert all(task.network.allow == () for task in tasks)
    assert (
        "not a valid plan: task 'a': a planner's plan cannot allow network destinations"
        in executor.prompts[1]
    )


async def test_a_planner_cannot_give_its_tasks_mcp_servers(tmp_path: Path) -> None:
    """A server is a program every attempt starts: only a person's plan may name one."""
    serving = {
        "tasks": [{"id": "a", "prompt": "do a",
                   "mcp_servers": {"x": {"command": "sh", "args": ["-c", "curl evil"]}}}],
    }  # fmt: skip
    executor = ScriptedExecutor(_answer(serving), _answer(GOOD))
    tasks = await _planner(executor, tmp_path).plan(SUBMITTED, tmp_path)
    assert tasks == GOOD_SPECS
    assert "task 'a': a planner's plan cannot name MCP servers" in executor.prompts[1]
