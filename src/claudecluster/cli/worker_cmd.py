"""``claudecluster worker``: serve a pool's work queue from this machine."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_OK
from claudecluster.errors import ConfigError
from claudecluster.observability.logging import configure_logging
from claudecluster.observability.redaction import Redactor
from claudecluster.runtime.connection import configured_auth, open_jetstream_log, open_nats
from claudecluster.runtime.join import decode_join_token, install_join_token
from claudecluster.runtime.sandboxing import NO_SANDBOX_NOTE, confinement_for
from claudecluster.runtime.worker import Worker, WorkerConfig, new_worker_id
from claudecluster.runtime.worker.config import configured_worker
from claudecluster.settings import Settings, load_settings
from claudecluster.transport.infrastructure import jetstream_infrastructure

__all__ = ["worker"]


def worker(
    *,
    nats: str | None = None,
    creds: Path | None = None,
    pool: str = "default",
    slots: int = 1,
    workspace_root: Path = Path(".claudecluster/workspaces"),
    keep_workspaces: bool = False,
    ack_wait: float = 30.0,
    nice: int = 5,
    health_port: int = 0,
    health_host: str = "127.0.0.1",
    no_sandbox: bool = False,
    config: Path | None = None,
    join: str | None = None,
) -> int:
    """Run a worker: take task attempts from a pool's queue and run them with Claude Code.

    It needs nothing but NATS: the base commit arrives as a git bundle, the result leaves
    as one. Stop it with Ctrl-C or SIGTERM; running attempts are handed back.

    Examples:
        claudecluster worker --nats nats://10.0.0.5:4222 --pool default --slots 4
        claudecluster worker --nats tls://nats.example:4222 --creds worker.nk
        claudecluster worker --join ccjoin1.eyJ1cmwiOi...

    Args:
        nats: NATS URL (default: nats.url from the configuration).
        creds: A credentials file for it: a NATS .creds file or an nkey seed file
            ('claudecluster creds worker' writes one); default: nats.creds.
        pool: The pool whose queue to serve.
        slots: Attempts to run at once.
        workspace_root: Where private workspaces are made.
        keep_workspaces: Leave workspaces on disk afterwards, for debugging.
        ack_wait: Seconds before the server redelivers the work of a silent worker.
        nice: CPU niceness of the agents (0 to 19).
        health_port: Serve GET /health and /metrics (Prometheus) on this port; 0 disables.
        health_host: The address for /health and /metrics: loopback unless something
            outside this host scrapes it (0.0.0.0 in a container).
        no_sandbox: Run attempts unconfined, as this user (sandbox.enabled: false). Without
            it the worker refuses to start where bubblewrap is missing. See docs/security.md.
        config: A claudecluster.yaml to read instead of the one in this directory.
        join: A join token from 'claudecluster creds join': the NATS URL, this worker's
            seed and the CA to trust, in one line (its files go to ~/.claudecluster/join/).
            --nats, --creds and --pool given as well win over the token's.
    """
    nats_flags: dict[str, object] = {}
    if join is not None:
        token = decode_join_token(join)
        joined = install_join_token(token)
        nats_flags = {"url": token.url, "creds": joined.seed}
        if joined.ca is not None:
            nats_flags["tls"] = {"ca": joined.ca}
        if pool == "default":
            pool = token.pool
        if token.ca_sha256:
            Console(stderr=True, highlight=False).print(
                f"joining {token.url}, trusting the CA {token.ca_sha256}",
                markup=False,
                emoji=False,  # a fingerprint's ":AB:" is not an emoji
            )
    if nats:
        nats_flags["url"] = nats
    if creds is not None:
        nats_flags["creds"] = creds
    flags: dict[str, object] = {"nats": nats_flags} if nats_flags else {}
    if no_sandbox:
        flags["sandbox"] = {"enabled": False}
    settings = load_settings(config_file=config, flags=flags or None).settings
    if not settings.nats.url:
        raise ConfigError("nats.url", "default", "a worker needs a NATS URL (--nats URL)")
    if slots < 1:
        raise ConfigError("slots", "flag --slots", "must be at least 1")
    if not 0 <= nice <= 19:
        raise ConfigError("nice", "flag --nice", "must be between 0 and 19")
    configure_logging(level=settings.logging.level, redactor=Redactor(settings.secret_values()))
    configured = configured_worker(
        settings,
        worker_id=new_worker_id(),
        workspace_root=workspace_root.resolve(),
        api_environment=settings.api_environment(),
        confinement=confinement_for(settings),
    )
    worker_config = replace(
        configured,
        pool=pool,
        slots=slots,
        keep_workspaces=keep_workspaces,
        ack_wait_s=ack_wait,
        nice=nice,
        health_port=health_port or None,
        health_host=health_host,
    )
    if not settings.sandbox.enabled:
        Console(stderr=True, highlight=False).print(NO_SANDBOX_NOTE, markup=False)
    anyio.run(_serve, settings, worker_config)
    return EXIT_OK


async def _serve(settings: Settings, config: WorkerConfig) -> None:
    assert settings.nats.url is not None
    console = Console(stderr=True, highlight=False)
    auth = configured_auth(settings, "worker")
    async with (
        open_jetstream_log(
            settings.nats.url,
            name=f"worker-{config.worker_id}",
            redactor=Redactor(settings.secret_values()),
            replicas=settings.nats.replicas,
            auth=auth,
            apply=not auth.authenticated,
        ) as (client, log),
        open_nats(
            settings.nats.url, name=f"worker-{config.worker_id}-transfers", auth=auth
        ) as transfers,
    ):
        # History and result bundles on a connection of their own: hundreds of MB moving
        # never queue ahead of heartbeats, events and commands.
        seams = jetstream_infrastructure(
            log, client, transfer_client=transfers, work_ack_wait_s=config.ack_wait_s
        )
        runner = Worker(config, log, infrastructure=seams)
        async with anyio.create_task_group() as group:
            group.start_soon(_drain_on_signal, runner, console)
            async with anyio.create_task_group() as serving:
                await serving.start(runner.serve)
                console.print(
                    f"worker {config.worker_id} serving pool {config.pool!r} with "
                    f"{config.slots} slot(s)",
                    markup=False,
                )
            # Served to the end: a signal, or a DrainWorker command from the CLI.
            group.cancel_scope.cancel()


async def _drain_on_signal(runner: Worker, console: Console) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            console.print("draining: no new work; running attempts finish", markup=False)
            runner.stop("stopped by a signal")
            return
