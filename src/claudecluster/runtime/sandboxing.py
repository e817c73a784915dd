"""The operator's sandbox choice, turned into the confinement workers and drivers use.

One rule, in one place: where ``sandbox.enabled`` is true (the default) and the mechanism
does not work on this machine, the process refuses to start with a sentence saying what
to install or that ``--no-sandbox`` runs agents unconfined.
"""

from __future__ import annotations

from claudecluster.errors import ConfigError
from claudecluster.executors.confinement import Confinement, SandboxUnavailableError
from claudecluster.settings import Settings

__all__ = ["NO_SANDBOX_NOTE", "confinement_for"]

#: What a front end prints when it runs agents unconfined.
NO_SANDBOX_NOTE = (
    "the sandbox is off (--no-sandbox): agents, shell tasks, setup and verify commands run "
    "unconfined, as this user, with its files and network"
)


def confinement_for(settings: Settings) -> Confinement:
    """The confinement ``settings`` ask for.

    Raises:
        ConfigError: the sandbox is enabled but cannot work on this machine.
    """
    chosen = settings.sandbox
    options: dict[str, object] = {
        "max_processes": chosen.max_processes,
        "pass_env": tuple(chosen.pass_env),
        "setup_network": chosen.setup_network,
    }
    if not chosen.enabled:
        return Confinement.unconfined(**options)
    try:
        return Confinement.required(**options)
    except SandboxUnavailableError as exc:
        raise ConfigError("sandbox.enabled", "the default or configuration", str(exc)) from None
