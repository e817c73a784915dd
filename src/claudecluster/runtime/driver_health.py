"""A driver's /health and /metrics, for process supervisors, container health checks and
Prometheus.

A standby driver is healthy: standing by is its job. What an operator wants to see is
which driver leads, so ``claudecluster_driver_leading`` is 1 on the holder of the lease
and 0 on the others, and ``claudecluster_driver_lease_epoch`` says which term it holds
(a takeover shows as a new epoch on another instance).
"""

from __future__ import annotations

import re
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["DriverHealth", "driver_health_app"]

_EPOCH: Final = re.compile(r"epoch (\d+)")


class DriverHealth:
    """What the driver's endpoint reports, fed by the driver's phase changes."""

    def __init__(self, *, standby: bool) -> None:
        self.registry = CollectorRegistry()
        self.phase = "starting"
        self.leading = Gauge(
            "claudecluster_driver_leading",
            "1 while this driver holds the driver lease and drives, else 0.",
            registry=self.registry,
        )
        self.epoch = Gauge(
            "claudecluster_driver_lease_epoch",
            "The epoch of the lease term this driver holds (0 while standing by).",
            registry=self.registry,
        )
        self.phase_changes = Counter(
            "claudecluster_driver_phase_changes",
            "Times this driver started leading or went back to standing by.",
            registry=self.registry,
        )
        self._standby = standby
        self._leading = False

    def serving(self) -> None:
        """The driver is up; a driver without a standby leads from here on."""
        if not self._standby:
            self.changed("leading")

    def changed(self, phase: str) -> None:
        """Record a phase as the standby driver announces it (``"leading (epoch 3, ...)"``,
        ``"standby"``, ``"standby (reason)"``)."""
        self.phase = phase
        self.phase_changes.inc()
        leading = phase.startswith("leading")
        self._leading = leading
        self.leading.set(1 if leading else 0)
        found = _EPOCH.search(phase) if leading else None
        self.epoch.set(int(found.group(1)) if found else 0)

    def report(self) -> dict[str, object]:
        """The /health body: ``ok`` once serving, with the phase it is in."""
        status = "starting" if self.phase == "starting" else "ok"
        return {"status": status, "phase": self.phase, "leading": self._leading}


def driver_health_app(health: DriverHealth) -> Starlette:
    """GET /health (200 once serving, leading or standing by; 503 while starting) and
    GET /metrics."""

    async def health_route(_: Request) -> JSONResponse:
        report = health.report()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    async def metrics_text(_: Request) -> Response:
        return Response(generate_latest(health.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health", health_route, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ]
    )
