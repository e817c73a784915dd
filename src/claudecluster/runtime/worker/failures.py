"""Turning the errors an attempt ended with into the failure it records."""

from __future__ import annotations

import msgspec

from claudecluster.actors.worker import (
    AttemptFailure,
    classify_failure,
)
from claudecluster.errors import (
    ClusterError,
)

__all__: list[str] = []  # the package's own helpers


def _classify_group(failed: BaseExceptionGroup[ClusterError | OSError]) -> AttemptFailure:
    """The recorded failure of errors that arrived together: classified by the first
    (what stopped the attempt), with every one of them in the reason."""
    first = _first_leaf(failed)
    failure = classify_failure(first)
    reasons = _leaf_errors(failed)
    return msgspec.structs.replace(failure, reason="; ".join(reasons) or failure.reason)


def _first_leaf(group: BaseExceptionGroup[ClusterError | OSError]) -> ClusterError | OSError:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, ClusterError | OSError)  # what except* let in
    return leaf


def _leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[str]:
    """What failed, out of the task groups it arrived wrapped in (their own message,
    "unhandled errors in a TaskGroup", says nothing)."""
    found: list[str] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaf_errors(exc)
        else:
            found.append(str(exc) or repr(exc))  # a bare TimeoutError() says nothing
    return found
