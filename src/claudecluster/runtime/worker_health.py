"""A worker's /health and /metrics, for process supervisors and Prometheus."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["WorkerMetrics", "WorkerStatus", "health_app"]


class WorkerStatus(Protocol):
    """What the health endpoint reports; the worker implements it."""

    def health(self) -> dict[str, object]:
        """A JSON-compatible snapshot: status, id, pool, slots, running attempts."""
        ...


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of its own (one per worker)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.attempts_started = Counter(
            "claudecluster_worker_attempts_started",
            "Task attempts this worker started.",
            registry=self.registry,
        )
        self.attempts_finished = Counter(
            "claudecluster_worker_attempts_finished",
            "Task attempts this worker finished, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.running = Gauge(
            "claudecluster_worker_running_attempts",
            "Task attempts running now.",
            registry=self.registry,
        )
        self.slots = Gauge(
            "claudecluster_worker_slots",
            "Attempts this worker runs at once.",
            registry=self.registry,
        )


def health_app(status: WorkerStatus, metrics: WorkerMetrics) -> Starlette:
    """GET /health (200 while serving, 503 while draining) and GET /metrics."""

    async def health(_: Request) -> JSONResponse:
        report = status.health()
        code = 200 if report.get("status") == "ok" else 503
        return JSONResponse(report, status_code=code)

    async def metrics_text(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ]
    )
