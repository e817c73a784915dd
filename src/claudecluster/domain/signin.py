"""How Claude Code signs in, and exactly what it is handed for it.

Claude Code users sign in one of six ways: an API key (``ANTHROPIC_API_KEY``); a Claude
subscription's long-lived OAuth token (``CLAUDE_CODE_OAUTH_TOKEN``, from
``claude setup-token``); an LLM gateway (``ANTHROPIC_BASE_URL`` with
``ANTHROPIC_AUTH_TOKEN``, sent as a bearer token); Amazon Bedrock and Google Vertex AI
(their ``CLAUDE_CODE_USE_*`` switches, region and credentials); or an ``apiKeyHelper``
command that prints a key.

This module chooses one of them from the variables it is given (a pure function: the
shell hands it the environment and the configuration) and says what that mode needs:
the variables Claude Code is handed (nothing else of the machine's environment crosses
the allowlist, so a second mode's credentials never reach an agent), the secrets among
them (each registered with the redactor), the one API endpoint the sandbox forwards to,
and the files Claude Code must read (Google's credentials file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from claudecluster.errors import ConfigError

__all__ = [
    "API_KEY_HELPER_VARIABLE",
    "DEFAULT_API_URL",
    "SIGN_IN_CHOICES",
    "SIGN_IN_VARIABLES",
    "SignIn",
    "SignInMode",
    "api_url_of",
    "choose_sign_in",
    "no_sign_in_problem",
    "secrets_among",
]

SignInMode = Literal["api_key", "oauth_token", "gateway", "bedrock", "vertex", "api_key_helper"]

#: What ``claude.sign_in`` may say: ``auto`` picks the mode the variables point at.
SIGN_IN_CHOICES: Final = ("auto", *get_args(SignInMode))

#: Where the helper command travels with the other sign-in variables (from the worker's
#: configuration to the attempt); the executor turns it into Claude Code's ``apiKeyHelper``
#: setting and never hands it to the process as a variable.
API_KEY_HELPER_VARIABLE: Final = "CLAUDECLUSTER_API_KEY_HELPER"

#: Anthropic's own API, where the API key and OAuth token modes go by default.
DEFAULT_API_URL: Final = "https://api.anthropic.com"

#: Per mode: the variables it requires, then those it passes on when they are set.
_VARIABLES: Final[Mapping[SignInMode, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "api_key": (("ANTHROPIC_API_KEY",), ("ANTHROPIC_BASE_URL",)),
    "oauth_token": (("CLAUDE_CODE_OAUTH_TOKEN",), ("ANTHROPIC_BASE_URL",)),
    "gateway": (
        ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"),
        ("ANTHROPIC_CUSTOM_HEADERS",),
    ),
    "bedrock": (
        ("CLAUDE_CODE_USE_BEDROCK", "AWS_REGION"),
        (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_BEARER_TOKEN_BEDROCK",
            "ANTHROPIC_BEDROCK_BASE_URL",
            "ANTHROPIC_SMALL_FAST_MODEL_AWS_REGION",
            "CLAUDE_CODE_SKIP_BEDROCK_AUTH",
        ),
    ),
    "vertex": (
        ("CLAUDE_CODE_USE_VERTEX", "CLOUD_ML_REGION", "ANTHROPIC_VERTEX_PROJECT_ID"),
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            "ANTHROPIC_VERTEX_BASE_URL",
            "CLAUDE_CODE_SKIP_VERTEX_AUTH",
        ),
    ),
    "api_key_helper": ((), ("ANTHROPIC_BASE_URL",)),
}

#: Values that are credentials: redacted everywhere, never shown.
_SECRETS: Final = frozenset(
    {
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_CUSTOM_HEADERS",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_BEARER_TOKEN_BEDROCK",
    }
)

#: Every variable any mode reads: what the shell collects from its environment.
SIGN_IN_VARIABLES: Final = frozenset(
    name for required, optional in _VARIABLES.values() for name in (*required, *optional)
)

_DESCRIPTIONS: Final[Mapping[SignInMode, str]] = {
    "api_key": "API key (ANTHROPIC_API_KEY)",
    "oauth_token": "Claude subscription token (CLAUDE_CODE_OAUTH_TOKEN)",
    "gateway": "LLM gateway (ANTHROPIC_BASE_URL with ANTHROPIC_AUTH_TOKEN)",
    "bedrock": "Amazon Bedrock (CLAUDE_CODE_USE_BEDROCK)",
    "vertex": "Google Vertex AI (CLAUDE_CODE_USE_VERTEX)",
    "api_key_helper": "apiKeyHelper command (claude.api_key_helper)",
}

#: What a user does to get each mode's required variables.
_FIXES: Final[Mapping[SignInMode, str]] = {
    "api_key": "export ANTHROPIC_API_KEY (a key from the Claude Console)",
    "oauth_token": "run `claude setup-token` and export CLAUDE_CODE_OAUTH_TOKEN",
    "gateway": "export ANTHROPIC_BASE_URL (the gateway) and ANTHROPIC_AUTH_TOKEN",
    "bedrock": "export CLAUDE_CODE_USE_BEDROCK=1, AWS_REGION and AWS credentials",
    "vertex": "export CLAUDE_CODE_USE_VERTEX=1, CLOUD_ML_REGION and ANTHROPIC_VERTEX_PROJECT_ID",
    "api_key_helper": "set claude.api_key_helper to a command that prints a key",
}

_NO_SIGN_IN: Final = (
    "Claude Code has no way to sign in: export ANTHROPIC_API_KEY, or CLAUDE_CODE_OAUTH_TOKEN "
    "(from `claude setup-token`), or ANTHROPIC_BASE_URL with ANTHROPIC_AUTH_TOKEN for an "
    "LLM gateway, or CLAUDE_CODE_USE_BEDROCK / CLAUDE_CODE_USE_VERTEX with their settings, "
    "or set claude.api_key_helper"
)


@dataclass(frozen=True, slots=True)
class SignIn:
    """One way of signing in, and all Claude Code is handed for it.

    Attributes:
        mode: which of the six.
        environment: the variables Claude Code gets (and no others of the machine's).
        secrets: the credential values among them, for the redactor.
        api_url: the one endpoint the sandbox lets the agent reach.
        readable: files Claude Code must read for it (Google's credentials file).
        api_key_helper: the command that prints a key, in that mode.
    """

    mode: SignInMode
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    api_url: str = DEFAULT_API_URL
    readable: tuple[str, ...] = ()
    api_key_helper: str | None = None

    @property
    def description(self) -> str:
        """What people call it, with the variable that chose it."""
        return _DESCRIPTIONS[self.mode]


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _detected(variables: Mapping[str, str], api_key_helper: str | None) -> SignInMode | None:
    """The mode the variables point at, in Claude Code's own order of precedence."""
    if _on(variables.get("CLAUDE_CODE_USE_BEDROCK")):
        return "bedrock"
    if _on(variables.get("CLAUDE_CODE_USE_VERTEX")):
        return "vertex"
    if variables.get("ANTHROPIC_AUTH_TOKEN"):
        return "gateway"
    if variables.get("ANTHROPIC_API_KEY"):
        return "api_key"
    if api_key_helper:
        return "api_key_helper"
    if variables.get("CLAUDE_CODE_OAUTH_TOKEN"):
        return "oauth_token"
    return None


def api_url_of(environment: Mapping[str, str]) -> str:
    """The endpoint Claude Code will call with ``environment``: what the sandbox forwards."""
    if _on(environment.get("CLAUDE_CODE_USE_BEDROCK")):
        region = environment.get("AWS_REGION", "us-east-1")
        return environment.get("ANTHROPIC_BEDROCK_BASE_URL") or (
            f"https://bedrock-runtime.{region}.amazonaws.com"
        )
    if _on(environment.get("CLAUDE_CODE_USE_VERTEX")):
        region = environment.get("CLOUD_ML_REGION", "global")
        host = "aiplatform.googleapis.com"
        default = f"https://{host}" if region == "global" else f"https://{region}-{host}"
        return environment.get("ANTHROPIC_VERTEX_BASE_URL") or default
    return environment.get("ANTHROPIC_BASE_URL") or DEFAULT_API_URL


def choose_sign_in(
    variables: Mapping[str, str],
    *,
    mode: str = "auto",
    api_key_helper: str | None = None,
    source: str = "claude.sign_in",
) -> SignIn | None:
    """The sign-in ``variables`` (and the configured helper) make, or None for none.

    Args:
        variables: the sign-in variables that are set (from the environment and the
            configuration; others are ignored).
        mode: ``auto``, or the mode the operator chose.
        api_key_helper: the configured helper command, if any.
        source: where ``mode`` came from, for the error.

    Raises:
        ConfigError: ``mode`` names no mode, or the chosen mode lacks a variable it needs
            (the message says which, and how to get it); a URL is not http(s).
    """
    if mode not in SIGN_IN_CHOICES:
        raise ConfigError(
            "claude.sign_in", source, f"{mode!r} is not one of {', '.join(SIGN_IN_CHOICES)}"
        )
    chosen: SignInMode | None = (
        _detected(variables, api_key_helper) if mode == "auto" else mode  # type: ignore[assignment]
    )
    if chosen is None:
        return None
    required, optional = _VARIABLES[chosen]
    missing = [name for name in required if not variables.get(name)]
    if chosen == "api_key_helper" and not api_key_helper:
        missing.append("claude.api_key_helper")
    if missing:
        raise ConfigError(
            "claude.sign_in",
            source,
            f"{_DESCRIPTIONS[chosen]} needs {', '.join(missing)}: {_FIXES[chosen]}",
        )
    environment = {name: variables[name] for name in (*required, *optional) if variables.get(name)}
    if chosen == "api_key_helper" and api_key_helper:
        environment[API_KEY_HELPER_VARIABLE] = api_key_helper
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_BEDROCK_BASE_URL", "ANTHROPIC_VERTEX_BASE_URL"):
        url = environment.get(name)
        if url is not None and urlsplit(url).scheme not in {"http", "https"}:
            raise ConfigError("claude.sign_in", f"env {name}", f"{url!r} is not an http(s) URL")
    readable = tuple(
        environment[name] for name in ("GOOGLE_APPLICATION_CREDENTIALS",) if name in environment
    )
    return SignIn(
        mode=chosen,
        environment=environment,
        secrets=tuple(value for name, value in environment.items() if name in _SECRETS),
        api_url=api_url_of(environment),
        readable=readable,
        api_key_helper=api_key_helper if chosen == "api_key_helper" else None,
    )


def secrets_among(variables: Mapping[str, str]) -> tuple[str, ...]:
    """The credential values among ``variables``, whichever mode they would make."""
    return tuple(value for name, value in variables.items() if name in _SECRETS and value)


def no_sign_in_problem() -> str:
    """What to tell a user whose machine has no way to sign in."""
    return _NO_SIGN_IN
