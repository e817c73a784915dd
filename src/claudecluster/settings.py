"""Configuration: ``claudecluster.yaml``, then ``CLAUDECLUSTER_*`` env vars, then CLI flags.

Each later layer overrides the earlier ones key by key (``CLAUDECLUSTER_NATS__URL``
overrides ``nats.url`` from the file; a list or mapping is given as JSON,
``CLAUDECLUSTER_GATEWAY__MCP_ALLOWED_HOSTS='["tools.example:*"]'``). We read and merge the
layers ourselves, so that every effective value knows where it came from, which is what an
error message (and a future ``config show``) needs to say; pydantic validates the merged
result. The API key is also read from the conventional ``ANTHROPIC_API_KEY``;
``CLAUDECLUSTER_ANTHROPIC_API_KEY`` wins over it.

The environment is read here rather than by pydantic-settings: its env source is about 30
lines of what this module needs, and importing the package cost every CLI command, ``status``
included, 40 ms of an idle machine's 290 (a sixth of the command) and more under load.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import pydantic

from claudecluster.actors.worker import DEFAULT_PERMISSION_MODES
from claudecluster.config_files import config_error, parse_yaml
from claudecluster.domain.signin import (
    SIGN_IN_CHOICES,
    SIGN_IN_VARIABLES,
    SignIn,
    choose_sign_in,
    secrets_among,
)
from claudecluster.domain.submission import DEFAULT_MAX_TASKS, MAX_TASKS_CEILING
from claudecluster.errors import ConfigError
from claudecluster.events.model import TaskLimits
from claudecluster.observability.redaction import redact_url

if TYPE_CHECKING:
    from claudecluster.actors.driver import DriverConfig

__all__ = [
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "DriverSettings",
    "GitHubSettings",
    "GatewaySettings",
    "LimitsSettings",
    "LoadedSettings",
    "LoggingSettings",
    "NatsSettings",
    "SandboxSettings",
    "NatsTlsSettings",
    "Settings",
    "WorkerSettings",
    "load_settings",
]

CONFIG_FILE_NAME: Final = "claudecluster.yaml"
ENV_PREFIX: Final = "CLAUDECLUSTER_"


#: The shortest HS256 secret accepted (RFC 7518: at least the hash's 256 bits).
MIN_JWT_SECRET_BYTES: Final = 32
#: The safe defaults ``init`` writes (the limits section): generous for one task of a
#: coding goal, small enough that a runaway agent or plan stops well before a surprise.
DEFAULT_TASK_MAX_TURNS: Final = 50
DEFAULT_TASK_WALL_TIME_S: Final = 1800.0
DEFAULT_TASK_MAX_COST_USD: Final = 5.0
DEFAULT_RUN_BUDGET_USD: Final = 25.0


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class NatsTlsSettings(_Section):
    """TLS to a NATS server or cluster (used with ``tls://`` URLs)."""

    ca: Path | None = pydantic.Field(
        default=None,
        description="CA certificate file (PEM) the server's certificate must chain to; "
        "unset: the system's trust store.",
    )
    cert: Path | None = pydantic.Field(
        default=None, description="Client certificate (PEM), for servers that verify clients."
    )
    key: Path | None = pydantic.Field(default=None, description="The client certificate's key.")


class NatsSettings(_Section):
    """Where the event log lives, and how to prove who we are to it."""

    url: str | None = pydantic.Field(
        default=None,
        description="NATS server or cluster URL(s), comma-separated. Unset: start the "
        "embedded nats-server.",
    )
    store_dir: Path = pydantic.Field(
        default=Path(".claudecluster/nats"),
        description="Data directory of the embedded nats-server (relative to the project).",
    )
    port: int = pydantic.Field(
        default=0, ge=0, le=65535, description="Embedded server port; 0 picks a free one."
    )
    server_binary: Path | None = pydantic.Field(
        default=None, description="A nats-server executable instead of the packaged one."
    )
    replicas: int | None = pydantic.Field(
        default=None, ge=1, le=5, description="Stream replicas; 3 on a three-server cluster."
    )
    creds: Path | None = pydantic.Field(
        default=None,
        description="Credentials file for nats.url: a NATS .creds file (user JWT and seed) "
        "or an nkey seed file (as 'claudecluster creds' writes).",
    )
    nkey_seed: Path | None = pydantic.Field(
        default=None, description="An nkey seed file for nats.url (same as a seed in creds)."
    )
    user: str | None = pydantic.Field(
        default=None, description="User name for nats.url (kept out of the URL)."
    )
    password: pydantic.SecretStr | None = pydantic.Field(
        default=None,
        description="Password for nats.user; best from the environment "
        "(CLAUDECLUSTER_NATS__PASSWORD). Redacted everywhere.",
    )
    inbox_prefix: str | None = pydantic.Field(
        default=None,
        description=(
            "Reply-subject prefix; unset: _INBOX_<role> with credentials, as "
            "nats/permissions.yaml allows (nats-py's own _INBOX without)."
        ),
    )
    tls: NatsTlsSettings = pydantic.Field(default_factory=NatsTlsSettings)

    @pydantic.field_validator("url")
    @classmethod
    def _nats_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for part in value.split(","):
            scheme = urlsplit(part.strip()).scheme
            if scheme not in {"nats", "tls", "ws", "wss"}:
                shown = redact_url(part.strip())
                raise ValueError(f"{shown!r} is not a nats://, tls://, ws:// or wss:// URL")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A password in the URL is a secret: never show it in a repr or a log line.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" and value else value


class WorkerSettings(_Section):
    """How workers on this machine prepare workspaces and run agents."""

    copy_from: Path | None = pydantic.Field(
        default=None,
        description="A directory on the worker's machine holding untracked files to copy in.",
    )
    copy_files: list[str] = pydantic.Field(
        default_factory=list,
        description="Paths or globs under copy_from (e.g. '.env') copied into every workspace; "
        "they are excluded from the task's commits.",
    )
    setup_command: str | None = pydantic.Field(
        default=None, description="A shell command run in each workspace before the agent."
    )
    setup_timeout_s: float = pydantic.Field(default=600.0, gt=0)
    permission_modes: list[str] = pydantic.Field(
        default_factory=lambda: list(DEFAULT_PERMISSION_MODES),
        description="Claude Code permission modes a work item may ask for; an item asking "
        "for another is refused with the reason (bypassPermissions only if listed here).",
    )
    allow_plan_mcp_servers: bool = pydantic.Field(
        default=False,
        description="Run MCP servers a work item names (mcp_config); off: such items are "
        "refused with the reason.",
    )
    repo_cache: Path | None = pydantic.Field(
        default=None,
        description="Where this host keeps one bare copy of each repository it serves "
        "(default: repo-cache/ beside the workspaces, in .claudecluster/).",
    )
    repo_remotes: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="Git remote URLs by repository key (its root commit): a host fetches "
        "new history from them before it reads bundles from the object store.",
    )


class SandboxSettings(_Section):
    """How attempts, setup and verify commands are confined (docs/security.md)."""

    enabled: bool = pydantic.Field(
        default=True,
        description="Confine every attempt, setup and verify command with bubblewrap and "
        "a cgroup; false (the --no-sandbox flag) runs them as this user, unconfined. A "
        "worker or driver refuses to start where it is true and bubblewrap is missing.",
    )
    max_processes: int = pydantic.Field(
        default=1024,
        ge=16,
        description="Default pids.max of an attempt's cgroup (threads count); a task's "
        "limits.max_processes overrides it.",
    )
    pass_env: list[str] = pydantic.Field(
        default_factory=list,
        description="Names of this process's environment variables passed on to shell "
        "tasks, setup and verify commands (besides PATH, locale and TZ).",
    )
    setup_network: bool = pydantic.Field(
        default=False,
        description="Give the setup command the machine's network (to install "
        "dependencies); otherwise setup, verify and shell tasks have none.",
    )


class ClaudeSettings(_Section):
    """How Claude Code signs in (docs/first-run.md#signing-in)."""

    sign_in: str = pydantic.Field(
        default="auto",
        description="auto (the mode the environment points at), api_key, oauth_token, "
        "gateway, bedrock, vertex or api_key_helper. Only the chosen mode's variables "
        "reach Claude Code.",
    )
    api_key_helper: str | None = pydantic.Field(
        default=None,
        description="A command that prints an API key (Claude Code's apiKeyHelper); it "
        "runs where the agent runs, inside the sandbox.",
    )
    model: str | None = pydantic.Field(
        default=None,
        max_length=200,
        description="The Claude model of runs started here that name none (--model wins; "
        "a plan's or a task's model wins over both). Unset: Claude Code's default.",
    )

    @pydantic.field_validator("sign_in")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in SIGN_IN_CHOICES:
            raise ValueError(f"{value!r} is not one of {', '.join(SIGN_IN_CHOICES)}")
        return value


class DriverSettings(_Section):
    """How the driver paces, caps and watches the work of every run."""

    max_running: int = pydantic.Field(
        default=64, ge=1, description="Task attempts queued or running at once, all runs."
    )
    starts_per_s: float = pydantic.Field(
        default=10.0, gt=0, description="Sustained task starts per second (token bucket)."
    )
    start_burst: int = pydantic.Field(default=10, ge=1, description="Starts allowed at once.")
    max_tasks: int = pydantic.Field(
        default=DEFAULT_MAX_TASKS,
        ge=1,
        le=MAX_TASKS_CEILING,
        description="Tasks one run may have (a plan's, a fan-out's, a planner's); every front "
        "door refuses larger submissions and the driver refuses them again.",
    )
    lost_after_s: float = pydantic.Field(
        default=20.0, gt=0, description="A worker silent this long is declared lost."
    )
    rate_limit_backoff_s: float = pydantic.Field(
        default=2.0, ge=0, description="First pause of all starts after a rate-limit report."
    )
    rate_limit_backoff_max_s: float = pydantic.Field(default=60.0, ge=0)
    work_dir: Path | None = pydantic.Field(
        default=None,
        description="Where integration worktrees and bundles live (default: "
        "<repo>/.claudecluster/driver).",
    )
    standby: bool = pydantic.Field(
        default=True,
        description="Drive only while holding the driver lease (cc_leases/driver); without "
        "it, wait as a standby. false: drive at once, alone (never run two like that).",
    )
    lease_ttl_s: float = pydantic.Field(
        default=10.0,
        ge=1.0,
        le=3600.0,
        description="How long the driver lease lasts unless renewed: a standby takes over "
        "within this (plus a poll) of the holder dying or being cut off.",
    )
    lease_renew_s: float = pydantic.Field(
        default=0.0,
        ge=0.0,
        description="How often the holder renews the lease (0: a third of lease_ttl_s).",
    )
    lease_poll_s: float = pydantic.Field(
        default=1.0,
        gt=0.0,
        description="How often a standby looks at the lease besides watching it.",
    )


class GatewaySettings(_Section):
    """The HTTP/WebSocket gateway: where it listens and how it checks bearer tokens.

    Tokens are JWTs signed either with a shared secret (HS256: ``jwt_secret``) or with an
    RSA key pair (RS256: the gateway needs only ``jwt_public_key``; minting needs
    ``jwt_private_key``). Secrets come from the configuration file or the environment
    (``CLAUDECLUSTER_GATEWAY__JWT_SECRET``), never from the repository.
    """

    host: str = pydantic.Field(default="127.0.0.1", description="Address to listen on.")
    port: int = pydantic.Field(default=8080, ge=0, le=65535, description="0 picks a free one.")
    jwt_secret: pydantic.SecretStr | None = pydantic.Field(
        default=None, description="HS256 signing secret; never written to logs or events."
    )
    jwt_public_key: Path | None = pydantic.Field(
        default=None, description="PEM file of the RS256 public key that verifies tokens."
    )
    jwt_private_key: Path | None = pydantic.Field(
        default=None, description="PEM file of the RS256 private key that mints tokens."
    )
    issuer: str = pydantic.Field(default="claudecluster", description="The tokens' iss claim.")
    audience: str = pydantic.Field(
        default="claudecluster-gateway", description="The tokens' aud claim."
    )
    max_body_bytes: int = pydantic.Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="The largest request body any route (and /mcp) reads; larger ones get "
        "413, refused while reading.",
    )
    mcp_allowed_hosts: list[str] = pydantic.Field(
        default_factory=list,
        description="More Host values /mcp accepts besides loopback and the listen address, "
        "as name:port or name:* (a DNS name, a proxy's); others get 421.",
    )

    @pydantic.field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: pydantic.SecretStr | None) -> pydantic.SecretStr | None:
        # RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits); a
        # shorter one can be guessed offline from a single token.
        if value is not None and len(value.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(
                f"an HS256 secret must be at least {MIN_JWT_SECRET_BYTES} bytes; make one "
                "with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    mcp_allowed_origins: list[str] = pydantic.Field(
        default_factory=list,
        description="Browser origins /mcp accepts (e.g. https://tools.example.com); "
        "requests from other origins get 403.",
    )


class LimitsSettings(_Section):
    """Safe defaults: what one task and one run may spend when nobody said otherwise.

    A task's own ``limits:`` in a plan win field by field; ``run --budget`` wins over
    ``budget_usd``. ``claudecluster init`` writes these values into claudecluster.yaml, and
    ``run``'s preview shows the ones that apply. ``null`` lifts a limit.
    """

    max_turns: int | None = pydantic.Field(
        default=DEFAULT_TASK_MAX_TURNS, ge=1, description="Model turns one attempt may take."
    )
    wall_time_s: float | None = pydantic.Field(
        default=DEFAULT_TASK_WALL_TIME_S, gt=0, description="Seconds one attempt may run."
    )
    max_cost_usd: float | None = pydantic.Field(
        default=DEFAULT_TASK_MAX_COST_USD, gt=0, description="USD one attempt may spend."
    )
    budget_usd: float | None = pydantic.Field(
        default=DEFAULT_RUN_BUDGET_USD,
        gt=0,
        description="USD one run may spend: once reached, the run starts no further task "
        "and keeps what merged.",
    )

    def task_limits(self) -> TaskLimits:
        """The per-task defaults as the run policy carries them."""
        return TaskLimits(
            max_turns=self.max_turns, wall_time_s=self.wall_time_s, max_cost_usd=self.max_cost_usd
        )


class LoggingSettings(_Section):
    """How the processes log."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = pydantic.Field(
        default="auto", description="auto: JSON when stderr is not a terminal."
    )


class GitHubSettings(_Section):
    """Where ``run --pr`` opens its pull request (GitHub or a GitHub Enterprise server).

    The token is never configuration: it is read from GH_TOKEN or GITHUB_TOKEN.
    """

    api_url: str = pydantic.Field(
        default="https://api.github.com",
        description="The REST API base; GitHub Enterprise: https://HOST/api/v3.",
    )
    repository: str | None = pydantic.Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
        description="OWNER/NAME of the pull request's repository (default: read from the "
        "pushed remote's URL).",
    )
    base: str | None = pydantic.Field(
        default=None,
        description="The branch the pull request asks to merge into (default: the "
        "checkout's current branch).",
    )


class Settings(pydantic.BaseModel):
    """The effective configuration of one ClaudeCluster process (:func:`load_settings`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    nats: NatsSettings = NatsSettings()
    logging: LoggingSettings = LoggingSettings()
    worker: WorkerSettings = WorkerSettings()
    driver: DriverSettings = DriverSettings()
    gateway: GatewaySettings = GatewaySettings()
    sandbox: SandboxSettings = SandboxSettings()
    claude: ClaudeSettings = ClaudeSettings()
    github: GitHubSettings = GitHubSettings()
    limits: LimitsSettings = LimitsSettings()
    anthropic_api_key: pydantic.SecretStr | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices("anthropic_api_key", "ANTHROPIC_API_KEY"),
        description="Passed to Claude Code; never written to logs or events.",
    )

    anthropic_base_url: str | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices("anthropic_base_url", "ANTHROPIC_BASE_URL"),
        description="The Messages API Claude Code talks to (a scripted model, a proxy).",
    )

    claude_code_oauth_token: pydantic.SecretStr | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices(
            "claude_code_oauth_token", "CLAUDE_CODE_OAUTH_TOKEN"
        ),
        description="A Claude subscription's token (from `claude setup-token`).",
    )

    anthropic_auth_token: pydantic.SecretStr | None = pydantic.Field(
        default=None,
        validation_alias=pydantic.AliasChoices("anthropic_auth_token", "ANTHROPIC_AUTH_TOKEN"),
        description="An LLM gateway's bearer token (with anthropic_base_url).",
    )

    #: The cloud providers' sign-in variables of the environment the settings were loaded
    #: from (Bedrock's and Vertex's: region, project, credentials), by load_settings.
    _cloud_environment: dict[str, str] = pydantic.PrivateAttr(default_factory=dict)

    def sign_in(self) -> SignIn | None:
        """How Claude Code signs in with this configuration; None: no way is set up.

        Raises:
            ConfigError: the chosen mode lacks a variable it needs (says which and how).
        """
        return choose_sign_in(
            self._sign_in_variables(),
            mode=self.claude.sign_in,
            api_key_helper=self.claude.api_key_helper,
        )

    def _sign_in_variables(self) -> dict[str, str]:
        variables = dict(self._cloud_environment)
        for name, secret in (
            ("ANTHROPIC_API_KEY", self.anthropic_api_key),
            ("CLAUDE_CODE_OAUTH_TOKEN", self.claude_code_oauth_token),
            ("ANTHROPIC_AUTH_TOKEN", self.anthropic_auth_token),
        ):
            if secret is not None:
                variables[name] = secret.get_secret_value()
        if self.anthropic_base_url:
            variables["ANTHROPIC_BASE_URL"] = self.anthropic_base_url
        return variables

    def api_environment(self) -> dict[str, str]:
        """The variables Claude Code gets to sign in: the chosen mode's, and no others.

        Without a sign-in, only a configured ``anthropic_base_url`` (a scripted model that
        needs no key).

        Raises:
            ConfigError: the chosen mode lacks a variable it needs.
        """
        chosen = self.sign_in()
        if chosen is not None:
            return dict(chosen.environment)
        return {"ANTHROPIC_BASE_URL": self.anthropic_base_url} if self.anthropic_base_url else {}

    def driver_config(self) -> DriverConfig:
        """The decision core's fleet-wide limits, from the ``driver`` section."""
        # Imported here: the decision core is not what reading a configuration needs, and
        # every CLI command reads one (it cost ~0.15 s of ``status`` on a busy machine).
        from claudecluster.actors.driver import DriverConfig

        d = self.driver
        return DriverConfig(
            max_running=d.max_running,
            max_tasks=d.max_tasks,
            starts_per_s=d.starts_per_s,
            start_burst=d.start_burst,
            lost_after_s=d.lost_after_s,
            rate_limit_backoff_s=d.rate_limit_backoff_s,
            rate_limit_backoff_max_s=d.rate_limit_backoff_max_s,
        )

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for the redactor."""
        # Every sign-in credential there is, whichever mode is chosen (or none can be).
        secrets: list[str] = list(secrets_among(self._sign_in_variables()))
        if self.gateway.jwt_secret is not None:
            secrets.append(self.gateway.jwt_secret.get_secret_value())
        if self.nats.password is not None:
            secrets.append(self.nats.password.get_secret_value())
        for part in (self.nats.url or "").split(","):
            split = urlsplit(part.strip())
            if split.password:
                secrets.append(split.password)
            elif split.username:
                secrets.append(split.username)  # nats://TOKEN@host: the user part is a token
        return secrets


class LoadedSettings(pydantic.BaseModel):
    """Settings together with where each value came from.

    Attributes:
        settings: the validated configuration.
        sources: dotted key -> ``file <path>``, ``env <NAME>`` or ``flag --name``; keys
            not listed have their default.
        config_file: the file that was read, if any.
    """

    model_config = pydantic.ConfigDict(frozen=True, arbitrary_types_allowed=True)

    settings: Settings
    sources: dict[str, str]
    config_file: Path | None

    def source_of(self, key: str) -> str:
        """Where the value of ``key`` came from (``default`` when nothing set it)."""
        return _source_of(self.sources, key)


def _source_of(sources: Mapping[str, str], key: str) -> str:
    # An error on "nats.url" may come from a whole "nats" mapping given at once.
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = sources.get(".".join(parts[:end]))
        if found:
            return found
    return "default"


def _leaves(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.extend(_leaves(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


_CONVENTIONAL: Final = frozenset(
    {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"}
)


class _EnvLayer:
    """The ``CLAUDECLUSTER_*`` variables (and the conventional sign-in names) as a nested
    mapping, knowing which variable set which key.

    Names are case-insensitive and ``__`` nests (``CLAUDECLUSTER_NATS__TLS__CA`` is
    ``nats.tls.ca``); a value whose setting is a list, a mapping or a section is JSON.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._data: dict[str, Any] = {}
        self._names: dict[str, str] = {}
        prefixed = {name.upper(): value for name, value in environ.items()}
        for upper, value in sorted(prefixed.items()):
            if upper.startswith(ENV_PREFIX):
                path = upper[len(ENV_PREFIX) :].lower().split("__")
            elif upper in _CONVENTIONAL and f"{ENV_PREFIX}{upper}" not in prefixed:
                # Our own prefixed name is the more specific choice and wins.
                path = [upper.lower()]
            else:
                continue
            if not all(path):
                raise ConfigError(upper.lower(), f"env {upper}", "an empty part between '__'")
            self._set(path, _env_value(path, value, upper), f"env {upper}")

    def _set(self, path: list[str], value: Any, source: str) -> None:
        into = self._data
        for part in path[:-1]:
            nested = into.get(part)
            if not isinstance(nested, dict):
                nested = into[part] = {}
            into = nested
        leaf = path[-1]
        if isinstance(value, dict) and isinstance(into.get(leaf), dict):
            into[leaf] = _merge(value, into[leaf])  # a section as JSON, a key of it alone
        else:
            into[leaf] = value
        for key in _leaves({leaf: value}):
            self._names[".".join([*path[:-1], key])] = source

    def __call__(self) -> dict[str, Any]:
        return self._data

    def names(self, data: Mapping[str, Any]) -> dict[str, str]:
        """``env NAME`` for the dotted keys of ``data``."""
        return {key: self._names.get(key, "env") for key in _leaves(data)}


def _env_value(path: list[str], value: str, name: str) -> Any:
    """``value`` as the setting at ``path`` takes it: JSON where that is a list, a mapping
    or a section; the string otherwise (pydantic converts numbers and booleans)."""
    annotation: Any = Settings
    for part in path:
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return value  # not a setting: validation names it
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]  # a key of a mapping
        else:
            return value
    if not _complex(annotation):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            ".".join(path), f"env {name}", f"a list or mapping is given as JSON: {exc.msg}"
        ) from None


def _complex(annotation: Any) -> bool:
    """Whether a setting of this type is given as JSON in the environment."""
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_complex(arg) for arg in get_args(annotation) if arg is not type(None))
    origin = get_origin(annotation) or annotation
    if origin in (list, dict, tuple, set, frozenset):
        return True
    return isinstance(origin, type) and issubclass(origin, pydantic.BaseModel)


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    """A ``CLAUDECLUSTER_*`` variable that names no setting is a typo: say so."""
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        top = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if top not in Settings.model_fields:
            key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            raise ConfigError(key, f"env {name}", "unknown key (check its spelling)")


def _read_file(path: Path) -> dict[str, Any]:
    # Imported only when there is a file to read: a command run with flags and the
    # environment alone does not pay for the yaml package.
    import yaml

    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("(file)", f"file {path}", f"cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("(file)", f"file {path}", f"not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("(file)", f"file {path}", "the top level must be a mapping of keys")
    return raw


def load_settings(
    *,
    config_file: Path | None = None,
    project_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Read, merge and validate the configuration layers.

    Args:
        config_file: an explicit file; it must exist. Default: ``claudecluster.yaml`` in
            ``project_dir`` if present.
        project_dir: where to look for the default file (default: the working directory).
        environ: the environment (default: ``os.environ``).
        flags: values given as CLI flags, as a nested mapping (``{"nats": {"url": ...}}``).

    Raises:
        ConfigError: a layer cannot be read or a value is invalid; names key and source.
    """
    path = config_file
    if path is None:
        candidate = (project_dir or Path.cwd()) / CONFIG_FILE_NAME
        path = candidate if candidate.is_file() else None
    file_data = _read_file(path) if path is not None else {}
    environment = os.environ if environ is None else environ
    _reject_unknown_env(environment)
    env_source = _EnvLayer(environment)
    env_data = env_source()
    flag_data = dict(flags or {})

    sources: dict[str, str] = {}
    for key in _leaves(file_data):
        sources[key] = f"file {path}"
    sources.update(env_source.names(env_data))
    for key in _leaves(flag_data):
        sources[key] = "flag --" + key.replace(".", "-").replace("_", "-")

    merged = _merge(_merge(file_data, env_data), flag_data)
    try:
        settings = Settings(**merged)
    except pydantic.ValidationError as exc:
        raise config_error(exc, lambda key: _source_of(sources, key)) from None
    settings._cloud_environment = {
        name: value
        for name, value in environment.items()
        if name in SIGN_IN_VARIABLES and name not in _CONVENTIONAL and value
    }
    return LoadedSettings(settings=settings, sources=sources, config_file=path)
