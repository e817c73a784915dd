"""``claudecluster gateway`` (serve HTTP/WebSocket, write the OpenAPI document) and
``claudecluster token create`` (mint a bearer token for it)."""

from __future__ import annotations

import re
import signal
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import anyio
from cyclopts import App
from rich.console import Console

from claudecluster.auth import Scope, TokenSigner, TokenVerifier
from claudecluster.cli.app import EXIT_FAILED, EXIT_OK, flag_settings
from claudecluster.errors import ConfigError
from claudecluster.gateway import open_gateway, openapi_text
from claudecluster.observability.logging import configure_logging
from claudecluster.observability.redaction import Redactor, redact_url
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.runtime.local_cluster import open_serving_front_door
from claudecluster.settings import Settings, load_settings

__all__ = ["create", "openapi", "serve"]

gateway_app = App(name="gateway", help="The HTTP/WebSocket gateway: serve it, or its OpenAPI.")
token_app = App(name="token", help="Bearer tokens for the gateway.")

_TTL: Final = re.compile(r"(?P<n>\d+)(?P<unit>[smhd]?)")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _settings(
    nats: str | None, config: Path | None, host: str | None, port: int | None
) -> Settings:
    gateway = {"host": host, "port": port}
    given = {key: value for key, value in gateway.items() if value is not None}
    return flag_settings(config, nats=nats, sections={"gateway": given} if given else None)


@gateway_app.default
def serve(
    *,
    port: int | None = None,
    host: str | None = None,
    nats: str | None = None,
    workers: int = 2,
    config: Path | None = None,
) -> int:
    """Serve the HTTP/WebSocket gateway until interrupted.

    Every route but /health needs a bearer token (make one with 'claudecluster token
    create'); the signing secret or key comes from the gateway section of the
    configuration or from CLAUDECLUSTER_GATEWAY__JWT_SECRET. Without a NATS URL the
    embedded server is used, with a driver and local workers in this process.

    Examples:
        CLAUDECLUSTER_GATEWAY__JWT_SECRET=... claudecluster gateway --port 8080
        claudecluster gateway --port 8080 --nats nats://10.0.0.5:4222

    Args:
        port: Port to listen on (default: gateway.port, 8080; 0 picks a free one).
        host: Address to listen on (default: gateway.host, 127.0.0.1).
        nats: NATS URL of a running cluster (default: nats.url, else the embedded server).
        workers: Local workers beside the embedded server (embedded only).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = _settings(nats, config, host, port)
    configure_logging(level=settings.logging.level, redactor=Redactor(settings.secret_values()))
    verifier = TokenVerifier.from_settings(settings.gateway)
    if workers < 0:
        raise ConfigError("workers", "flag --workers", "must be 0 or more")
    anyio.run(_serve, settings, verifier, workers)
    return EXIT_OK


async def _serve(settings: Settings, verifier: TokenVerifier, workers: int) -> None:
    console = Console(highlight=False, stderr=True)
    gateway = settings.gateway
    async with (
        open_configured_cluster(settings, name="claudecluster-gateway") as conn,
        open_serving_front_door(conn, settings, workers=workers, project_dir=Path.cwd()) as door,
        AsyncExitStack() as stack,
    ):
        # Imported here, not at the top: the mcp package is most of the CPU every CLI
        # process (each worker and driver too) spends starting, and only this command needs it.
        from claudecluster.mcp_server.http_endpoint import mcp_for_gateway
        from claudecluster.runtime.plan_previews import configured_drafter

        drafter = configured_drafter(settings, Path.cwd())
        mcp = mcp_for_gateway(
            door,
            verifier,
            host=gateway.host,
            port=gateway.port,
            default_repo=str(Path.cwd()),
            hosts=gateway.mcp_allowed_hosts,
            origins=gateway.mcp_allowed_origins,
            max_body_bytes=gateway.max_body_bytes,
            drafter=drafter,
        )
        served = await stack.enter_async_context(
            open_gateway(
                door,
                verifier,
                host=gateway.host,
                port=gateway.port,
                extra_routes=[mcp.route],
                extra_lifespans=[mcp.lifespan],
                max_body_bytes=gateway.max_body_bytes,
                drafter=drafter,
            )
        )
        where = "embedded cluster" if conn.embedded else "cluster"
        console.print(
            f"gateway at {served.url} on the {where} at {redact_url(conn.url)}", markup=False
        )
        console.print(f"MCP server at {served.url}/mcp (streamable HTTP)", markup=False)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                console.print("gateway stopping", markup=False)
                break


@gateway_app.command
def openapi(out: Path = Path("docs/openapi.json"), *, check: bool = False) -> int:
    """Write the gateway's OpenAPI 3.1 document (built from its routes and types).

    Examples:
        claudecluster gateway openapi
        claudecluster gateway openapi --check   # exit 1 when the file is stale

    Args:
        out: The file to write.
        check: Write nothing; exit 1 if the file differs from the routes.
    """
    console = Console(highlight=False, soft_wrap=True)
    text = openapi_text()
    if not check:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}", markup=False)
        return EXIT_OK
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        console.print(f"{out} is stale: run 'claudecluster gateway openapi'", markup=False)
        return EXIT_FAILED
    console.print(f"{out} is current", markup=False)
    return EXIT_OK


def parse_ttl(text: str) -> timedelta:
    """A lifetime like ``90s``, ``30m``, ``12h``, ``7d`` or plain seconds.

    Raises:
        ConfigError: not one of those forms, or zero.
    """
    match = _TTL.fullmatch(text.strip())
    if match is None or int(match.group("n")) == 0:
        raise ConfigError("ttl", "flag --ttl", f"{text!r} is not a lifetime like 30m, 12h or 7d")
    return timedelta(seconds=int(match.group("n")) * _UNITS[match.group("unit")])


@token_app.command
def create(
    *,
    scope: Scope = "read",
    ttl: str = "12h",
    subject: str = "cli",
    config: Path | None = None,
) -> int:
    """Mint a bearer token for the gateway and print it.

    Scopes nest: admin includes submit, which includes read. The token is signed with
    gateway.jwt_secret (HS256) or gateway.jwt_private_key (RS256) from the configuration
    or the environment.

    Examples:
        claudecluster token create --scope submit --ttl 1h
        curl -H "Authorization: Bearer $(claudecluster token create)" localhost:8080/runs

    Args:
        scope: read, submit or admin.
        ttl: How long the token is valid: 90s, 30m, 12h, 7d.
        subject: Who the token is for (its sub claim).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = load_settings(config_file=config).settings
    signer = TokenSigner.from_settings(settings.gateway)
    token = signer.mint(subject=subject, scope=scope, ttl=parse_ttl(ttl), now=datetime.now(UTC))
    Console(highlight=False, soft_wrap=True).out(token)
    return EXIT_OK
