"""A fuzzer for every reader's pure code: decoders, the driver and worker cores, projections.

The rule it checks is the one the log needs: nothing recorded can stop a reader. It feeds
random and mutated messages, built from the recorded sample logs (``events/samples/``) and
one command of each type, to every decoder; what decodes goes on to the projections, the
driver's :func:`~claudecluster.actors.driver.decide` and the worker's
:func:`~claudecluster.actors.worker.admit`. Valid events are also fed in impossible orders
(shuffled, duplicated, dropped). A decoder may only raise
:class:`~claudecluster.errors.EventDecodeError` (the message is then quarantined by its
reader); nothing else may raise at all. What was rejected or counted as an anomaly is the
output.

It is hypothesis-free on purpose: a tight loop over seeded ``random`` mutations runs tens
of thousands of messages a second, so the default test suite can afford a large number of
them and a benchmark run a million (``benchmarks/bench_fuzz.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import msgspec

from claudecluster.actors.driver import (
    DriverState,
    EffectFailed,
    EffectSettled,
    Message,
    Resume,
    Tick,
    decide,
)
from claudecluster.actors.worker import admit
from claudecluster.errors import EventDecodeError
from claudecluster.events.codec import decode_command, decode_event, decode_stored_event, encode
from claudecluster.events.envelope import StoredEvent, wrap_command
from claudecluster.events.model import (
    ArtifactRef,
    CancelRun,
    CancelTask,
    Command,
    DrainWorker,
    FanoutSpec,
    RetryRun,
    RollbackRun,
    SubmitRun,
    TaskSpec,
)
from claudecluster.events.work import WorkItem, decode_work_item, encode_work_item
from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.projections.progress import run_progress
from claudecluster.projections.views import task_key

__all__ = ["FuzzReport", "fuzz", "sample_events"]

_SAMPLES: Final = Path(__file__).resolve().parents[3] / "events" / "samples"
_T0: Final = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
#: A fresh driver and view every so many messages keep each message's cost bounded.
_RESET_EVERY: Final = 2_000
_JSON: Final = msgspec.json.Encoder()
_RAW: Final = msgspec.json.Decoder()


@dataclass(slots=True)
class FuzzReport:
    """What a fuzz run fed and what the readers made of it.

    Attributes:
        messages: messages fed, all kinds together.
        rejected: messages a decoder refused (a reader quarantines each).
        decoded: messages that decoded and went on to the cores and projections.
        anomalies: decoded events the projections counted as not fitting their history.
        driver_effects: effects the driver core asked for (it kept deciding).
        runs_rejected: runs the driver core failed because it could not apply one of their
            events or go on with them (each ends with a RunFailed naming the reason).
        core_defects: of those, the ones where the core itself raised (not a graph it
            refused): a defect its guard contained; ``defects`` has their reasons.
        by_decoder: rejected messages per decoder.
    """

    messages: int = 0
    rejected: int = 0
    decoded: int = 0
    anomalies: int = 0
    driver_effects: int = 0
    runs_rejected: int = 0
    core_defects: int = 0
    defects: list[str] = field(default_factory=list)
    by_decoder: dict[str, int] = field(default_factory=dict)


def sample_events(directory: Path = _SAMPLES) -> list[StoredEvent]:
    """Every event of the recorded sample logs, in file order."""
    events: list[StoredEvent] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                events.append(decode_stored_event(line))
    return events


def _sample_commands() -> list[bytes]:
    spec = TaskSpec(task_id="t1", title="t", prompt="p", depends_on=())
    commands: list[Command] = [
        SubmitRun(run_id="sample-happy", goal="g", repo="/repo", plan=(spec,)),
        SubmitRun(
            run_id="f1",
            goal="g",
            repo="/repo",
            fanout=FanoutSpec(glob="*.py", prompt_template="fix {path}"),
        ),
        CancelRun(run_id="sample-happy", reason="r"),
        CancelTask(run_id="sample-happy", task_id="schema", reason="r"),
        RollbackRun(run_id="sample-happy", to_task="schema"),
        RetryRun(run_id="sample-happy", task_ids=("schema",)),
        DrainWorker(worker_id="w1"),
    ]
    return [
        encode(wrap_command(c, command_id=f"c{i}", now=_T0, correlation_id="fuzz"))
        for i, c in enumerate(commands)
    ]


def _sample_work_item() -> bytes:
    item = WorkItem(
        run_id="sample-happy",
        attempt=1,
        spec=TaskSpec(task_id="schema", title="t", prompt="p"),
        base_commit="0" * 40,
        base_bundle=ArtifactRef(name="b", bucket="b", key="k", size=1, sha256="0" * 64),
    )
    return encode_work_item(item)


# -- mutations of parsed JSON ------------------------------------------------------------

_IDS: Final = ["a\n", "", ".", "*", ">", "_x", "x" * 65, "sample-happy", "schema", "w1", "ü"]
_TAGS: Final = ["run.submitted", "run.planned", "task.queued", "task.succeeded", "task.merged",
                "run.failed", "worker.heartbeat", "worker.lost", "nope.nope", "run.submit",
                "task.cancel", "run.rollback"]  # fmt: skip


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


#: Built once: nesting a value 3,000 deep costs more than decoding it.
_DEEP: Final = tuple(_deep(depth) for depth in (50, 500, 3_000))


def _wrong(rng: random.Random) -> Any:
    """A value of the wrong kind, or of the right kind at an absurd size."""
    choice = rng.randrange(14)
    if choice == 0:
        return rng.choice(_DEEP)
    if choice == 1:
        return "x" * rng.choice((1_000, 100_000))
    if choice == 2:
        return rng.choice(_IDS)
    if choice == 3:
        return rng.choice((-1, 0, 1, 2, 2**63, -(2**63), 10**30))
    if choice == 4:
        return rng.choice((-1.5, 1e308, 0.0))
    if choice == 5:
        return rng.choice((True, False, None))
    if choice == 6:
        return [rng.choice(_IDS) for _ in range(rng.randrange(4))]
    if choice == 7:
        return {"type": rng.choice(_TAGS)}
    if choice == 8:
        return rng.choice(_TAGS)
    if choice == 9:
        return "2026-13-45T99:99:99Z"
    if choice == 10:
        return {rng.choice(_IDS): rng.choice(_IDS) for _ in range(3)}
    if choice == 11:
        return "\x00\ud7ff\u2028"
    if choice == 12:
        return [{"task_id": rng.choice(_IDS), "title": "t", "prompt": "p",
                 "depends_on": [rng.choice(_IDS)]} for _ in range(rng.randrange(1, 4))]  # fmt: skip
    return rng.randrange(-5, 5)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if len(path) > 12:
        return  # a planted deep value: mutating inside it adds nothing
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:8]):
            yield from _paths(child, (*path, index))


def _mutate_tree(rng: random.Random, raw: Any, paths: list[tuple[Any, ...]]) -> Any:
    """Change one place of ``raw``: delete it, add a stray key beside it, or replace it.

    ``paths`` are the places of the unmutated message; after an earlier mutation of the
    same message one may be gone, and then this one changes nothing.
    """
    if not isinstance(raw, dict) or not paths:
        return _wrong(rng)
    *parents, last = rng.choice(paths)
    node: Any = raw
    try:
        for step in parents:
            node = node[step]
        action = rng.randrange(4)
        if action == 0 and isinstance(node, dict):
            node.pop(last, None)
        elif action == 1 and isinstance(node, dict):
            node[rng.choice(_IDS) or "k"] = _wrong(rng)
        else:
            node[last] = _wrong(rng)
    except (KeyError, IndexError, TypeError):
        pass  # the place went with an earlier mutation
    return raw


# -- mutations of bytes ------------------------------------------------------------------


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(7)
    if choice == 0 and data:
        return data[: rng.randrange(len(data))]
    if choice == 1 and data:
        index = rng.randrange(len(data))
        return data[:index] + bytes([rng.randrange(256)]) + data[index + 1 :]
    if choice == 2:
        index = rng.randrange(len(data) + 1)
        return (
            data[:index]
            + rng.choice((b"[", b'{"a":', b'"')) * rng.choice((5, 1_200))
            + data[index:]
        )
    if choice == 3:
        return rng.randbytes(rng.randrange(1, 64))
    if choice == 4:
        return rng.choice((b"[" * 1_200, b'{"a":' * 1_200, b"", b"null", b"1e999", b"\xff\xfe"))
    if choice == 5 and data:
        index = rng.randrange(len(data))
        return data[:index] + b"\\ud800" + data[index:]
    return data + data


# -- the loop ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Readers:
    """One driver core and one view, as a reader holds them; reset now and then."""

    report: FuzzReport
    driver: DriverState = field(default_factory=DriverState)
    view: ClusterView = field(default_factory=ClusterView)
    seq: int = 0
    now: datetime = _T0

    def event(self, stored: StoredEvent) -> None:
        self.seq += 1
        stored = StoredEvent(seq=self.seq, subject=stored.subject, envelope=stored.envelope)
        before = self.view.anomaly_count
        self.view = apply(self.view, stored)
        self.report.anomalies += self.view.anomaly_count - before
        payload = stored.envelope.payload
        run_id = getattr(payload, "run_id", None)
        if isinstance(run_id, str) and self.seq % 16 == 0:  # a derived view, costly: sampled
            run_progress(self.view, run_id, self.now)
        self.decide(stored)

    def decide(self, message: Message) -> None:
        self.now += timedelta(seconds=0.25)
        self.report.driver_effects += len(decide(self.driver, message, self.now))

    def close(self) -> None:
        """Count the runs the driver core rejected, and why."""
        for book in self.driver.runs.values():
            if not book.rejected:
                continue
            self.report.runs_rejected += 1
            if "Error:" in book.rejected:  # "<ExceptionType>: ...": the core raised
                self.report.core_defects += 1
                if len(self.report.defects) < 20:
                    self.report.defects.append(book.rejected)

    def work_item(self, item: WorkItem) -> None:
        task = self.view.tasks.get(task_key(item.run_id, item.task_id))
        admit(task, item.attempt)


def fuzz(messages: int, *, seed: int = 0, samples: list[StoredEvent] | None = None) -> FuzzReport:
    """Feed ``messages`` random and mutated messages to every reader's pure code.

    Raises:
        Exception: whatever a decoder raised other than EventDecodeError, or anything the
            cores or projections raised: each is a defect the fuzzer found.
    """
    rng = random.Random(seed)  # noqa: S311 - seeded mutations, not secrets
    events = samples if samples is not None else sample_events()
    event_bytes = [encode(s.envelope) for s in events]
    line_bytes = [_JSON.encode(s) for s in events]
    command_bytes = _sample_commands()
    item_bytes = _sample_work_item()
    report = FuzzReport()
    readers = _Readers(report)

    def attempt(name: str, decoder: Callable[[bytes], Any], data: bytes) -> Any:
        report.messages += 1
        try:
            value = decoder(data)
        except EventDecodeError:
            report.rejected += 1
            report.by_decoder[name] = report.by_decoder.get(name, 0) + 1
            return None
        report.decoded += 1
        return value

    places: dict[bytes, list[tuple[Any, ...]]] = {}

    def mutated(source: bytes) -> bytes:
        if rng.random() < 0.5:
            return _mutate_bytes(rng, source)
        tree = _RAW.decode(source)
        paths = places.get(source)
        if paths is None:
            paths = places[source] = list(_paths(tree))[1:]
        for _ in range(rng.randrange(1, 4)):
            tree = _mutate_tree(rng, tree, paths)
        try:
            return _JSON.encode(tree)
        except RecursionError:  # nested deeper than the encoder goes: that is the point
            return b"[" * 3_000 + _JSON.encode(0) + b"]" * 3_000

    while report.messages < messages:
        if report.messages // _RESET_EVERY != (report.messages + 8) // _RESET_EVERY:
            readers.close()
            readers = _Readers(report)
        kind = rng.randrange(10)
        if kind < 4:
            envelope = attempt("event", decode_event, mutated(rng.choice(event_bytes)))
            if envelope is not None:
                subject = rng.choice(events).subject
                readers.event(StoredEvent(seq=1, subject=subject, envelope=envelope))
        elif kind < 6:
            envelope = attempt("command", decode_command, mutated(rng.choice(command_bytes)))
            if envelope is not None:
                readers.decide(envelope)
        elif kind == 6:
            item = attempt("work item", decode_work_item, mutated(item_bytes))
            if item is not None:
                readers.work_item(item)
        elif kind == 7:
            attempt("stored event", decode_stored_event, mutated(rng.choice(line_bytes)))
        elif kind == 8:
            # Valid events in impossible orders: a shuffled, duplicated, gappy history.
            for stored in rng.sample(events, k=min(len(events), 8)):
                report.messages += 1
                report.decoded += 1
                readers.event(stored)
        else:
            report.messages += 1
            key = rng.choice(("run:sample-happy:plan", "task:sample-happy:schema",
                              "merge:sample-happy", "run:x:end", "bogus"))  # fmt: skip
            message = rng.choice(
                (Tick(), Resume(), EffectSettled(key=key, seq=rng.randrange(0, 50)),
                 EffectFailed(key=key, reason="fuzz"))
            )  # fmt: skip
            readers.decide(message)
    readers.close()
    return report
