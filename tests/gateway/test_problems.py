"""Which problem each of our errors answers with: the status says whose fault it is."""

from __future__ import annotations

from claudecluster.errors import AmbiguousTaskError, ConfigError, UnknownEntityError
from claudecluster.gateway.problems import problem_for


def test_an_ambiguous_task_id_is_the_task_ids_fault_and_names_the_runs() -> None:
    problem = problem_for(AmbiguousTaskError("api", ("r1", "r2")))
    assert problem.status == 422
    assert [error.field for error in problem.errors] == ["task_id"]
    assert "r1, r2" in problem.detail


def test_a_configuration_error_names_its_key_and_an_unknown_task_is_not_found() -> None:
    problem = problem_for(ConfigError("run_id", "request", "use letters"))
    assert (problem.status, [error.field for error in problem.errors]) == (422, ["$.run_id"])
    assert problem_for(UnknownEntityError("task", "api")).status == 404
