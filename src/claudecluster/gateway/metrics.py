"""The gateway's Prometheus metrics: requests and latency per operation, open
WebSockets, events sent, and gauges of the cluster read from the view at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from claudecluster.runtime.front_door import FrontDoor

__all__ = ["GatewayMetrics"]


class _ClusterCollector(Collector):
    """Gauges read from the front door's view at scrape time (no bookkeeping of our own)."""

    def __init__(self, door: Callable[[], FrontDoor | None]) -> None:
        self._door = door

    def collect(self) -> Iterable[GaugeMetricFamily]:
        door = self._door()
        if door is None:
            return
        view = door.view
        seq = GaugeMetricFamily("claudecluster_log_last_seq", "Last event sequence applied.")
        seq.add_metric([], view.last_seq)
        yield seq
        for name, records in (("runs", view.runs), ("tasks", view.tasks)):
            family = GaugeMetricFamily(f"claudecluster_{name}", f"{name.title()} by state.",
                                       labels=["state"])  # fmt: skip
            counts: dict[str, int] = {}
            for record in records.values():
                counts[record.state.value] = counts.get(record.state.value, 0) + 1
            for state, count in sorted(counts.items()):
                family.add_metric([state], count)
            yield family
        workers = GaugeMetricFamily("claudecluster_workers", "Workers by state.", labels=["state"])
        states: dict[str, int] = {}
        for worker in view.workers.values():
            states[worker.state] = states.get(worker.state, 0) + 1
        for state, count in sorted(states.items()):
            workers.add_metric([state], count)
        yield workers


class GatewayMetrics:
    """The gateway's Prometheus registry: requests, latency, open WebSockets, the cluster."""

    def __init__(self, door: Callable[[], FrontDoor | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "claudecluster_gateway_requests", "HTTP requests answered.",
            ["operation", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "claudecluster_gateway_request_seconds", "Time to answer a request.",
            ["operation"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0),
        )  # fmt: skip
        self.websockets = Gauge(
            "claudecluster_gateway_websockets", "Open WebSocket event streams.",
            registry=self.registry,
        )  # fmt: skip
        self.events_sent = Counter(
            "claudecluster_gateway_events_sent", "Events sent to WebSocket clients.",
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_ClusterCollector(door))
