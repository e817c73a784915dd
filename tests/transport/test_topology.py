"""The declarative topology: applied idempotently, validated with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
import yaml

from claudecluster.errors import ConfigError
from claudecluster.events import TaskQueued
from claudecluster.runtime.connection import open_nats
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.topology import (
    EVENTS_STREAM,
    QUARANTINE_STREAM,
    Topology,
    apply_topology,
    default_topology_path,
    load_topology,
)
from tests.support import EnvelopeFactory


def test_the_shipped_topology_is_valid_and_names_the_streams_the_code_uses() -> None:
    topology = load_topology()
    names = {stream.name for stream in topology.streams}
    assert {EVENTS_STREAM, QUARANTINE_STREAM, "CC_COMMANDS", "CC_WORK"} <= names
    events = next(s for s in topology.streams if s.name == EVENTS_STREAM)
    # Purges are allowed for archiving finished runs (only the admin role may send one).
    assert (events.retention, events.discard, events.deny_delete, events.deny_purge) == (
        "limits",
        "new",
        True,
        False,
    )
    assert default_topology_path().name == "topology.yaml"


async def test_the_event_log_refuses_deletes_of_single_events(
    jetstream_log: JetStreamEventLog,
) -> None:
    await jetstream_log.append(EnvelopeFactory()(TaskQueued(run_id="r1", task_id="a")))
    js = jetstream_log._js
    info = await js.stream_info(EVENTS_STREAM)
    assert info.config.deny_delete
    assert not info.config.deny_purge  # a run's subjects, by `claudecluster archive`
    with pytest.raises(nats.js.errors.APIError):
        await js.delete_msg(EVENTS_STREAM, 1)
    assert await jetstream_log.last_seq() == 1


async def test_applying_the_topology_twice_changes_nothing(nats_url: str) -> None:
    topology = load_topology()
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, topology)
        before = await js.stream_info(EVENTS_STREAM)
        await apply_topology(js, topology)
        after = await js.stream_info(EVENTS_STREAM)
        assert after.config == before.config
        assert after.created == before.created
        kv = await js.key_value("cc_workers")
        assert (await kv.status()).ttl == 30
        await js.object_store("cc_artifacts")


async def test_a_changed_stream_setting_is_updated_in_place(nats_url: str) -> None:
    raw = yaml.safe_load(default_topology_path().read_text())
    commands = next(s for s in raw["streams"] if s["name"] == "CC_COMMANDS")
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, Topology.model_validate(raw))
        commands["max_age_s"] = 3600
        await apply_topology(js, Topology.model_validate(raw))
        info = await js.stream_info("CC_COMMANDS")
        assert info.config.max_age == 3600
        commands["max_age_s"] = 604800
        await apply_topology(js, Topology.model_validate(raw))


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_a_bad_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"streams": [{"name": "S", "subjects": ["a"], "retention": "x"}]})
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    assert caught.value.key == "streams.0.retention"
    assert caught.value.source == f"file {path}"


def test_a_consumer_of_an_unknown_stream_is_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "streams": [{"name": "S", "subjects": ["a"]}],
            "consumers": [{"stream": "T", "durable_name": "d", "filter_subject": "a"}],
        },
    )
    with pytest.raises(ConfigError, match="unknown stream 'T'"):
        load_topology(path)


@pytest.mark.parametrize("content", ["streams: [", None])
def test_unreadable_or_malformed_files_are_config_errors(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "missing.yaml" if content is None else _write(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    assert caught.value.source == f"file {path}"


async def test_changed_bucket_settings_are_applied_in_place(nats_url: str) -> None:
    raw = yaml.safe_load(default_topology_path().read_text())
    workers = next(kv for kv in raw["key_value"] if kv["bucket"] == "cc_workers")
    artifacts = next(o for o in raw["object_stores"] if o["bucket"] == "cc_artifacts")
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, Topology.model_validate(raw))
        workers["ttl_s"], workers["history"] = 45, 3
        artifacts["description"] = "changed"
        await apply_topology(js, Topology.model_validate(raw))
        config = (await js.stream_info("KV_cc_workers")).config
        assert (config.max_age, config.max_msgs_per_subject) == (45, 3)
        assert (await js.stream_info("OBJ_cc_artifacts")).config.description == "changed"
        await apply_topology(js, load_topology())


class _SlowToAnswer:
    """A JetStream context whose first request of each stream creation goes through but
    times out on this side, as creating a replicated stream does while its leader is
    elected on a loaded cluster."""

    def __init__(self, js: Any) -> None:
        self._js = js
        self.timed_out: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def add_stream(self, config: Any = None, **params: Any) -> Any:
        info = await self._js.add_stream(config, **params)
        if config.name not in self.timed_out:
            self.timed_out.append(config.name)
            raise nats.errors.TimeoutError
        return info


async def test_a_stream_creation_answered_too_late_is_tried_again_and_found_created(
    nats_url: str,
) -> None:
    topology = load_topology()
    async with open_nats(nats_url) as client:
        slow = _SlowToAnswer(client.jetstream())
        await apply_topology(slow, topology)  # type: ignore[arg-type]
        assert slow.timed_out == [stream.name for stream in topology.streams]
        info = await client.jetstream().stream_info(EVENTS_STREAM)
        assert info.config.deny_delete
