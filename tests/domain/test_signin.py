"""Choosing how Claude Code signs in: one mode, only its variables, every secret known."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.domain.signin import (
    API_KEY_HELPER_VARIABLE,
    SIGN_IN_VARIABLES,
    api_url_of,
    choose_sign_in,
    secrets_among,
)
from claudecluster.errors import ConfigError

EVERYTHING = {
    "ANTHROPIC_API_KEY": "sk-ant-key",
    "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat-token",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "AWS_REGION": "eu-west-1",
    "GOOGLE_APPLICATION_CREDENTIALS": "/creds.json",
}


def test_an_api_key_alone_is_the_api_key_mode_with_nothing_else() -> None:
    chosen = choose_sign_in(EVERYTHING)
    assert chosen is not None
    assert chosen.mode == "api_key"
    # The other modes' credentials never reach Claude Code.
    assert dict(chosen.environment) == {"ANTHROPIC_API_KEY": "sk-ant-key"}
    assert chosen.secrets == ("sk-ant-key",)
    assert chosen.api_url == "https://api.anthropic.com"


def test_a_subscription_token_is_sent_alone() -> None:
    chosen = choose_sign_in({"CLAUDE_CODE_OAUTH_TOKEN": "tok", "AWS_REGION": "x"})
    assert chosen is not None
    assert chosen.mode == "oauth_token"
    assert dict(chosen.environment) == {"CLAUDE_CODE_OAUTH_TOKEN": "tok"}
    assert "subscription" in chosen.description


def test_a_gateway_needs_its_url_and_names_what_is_missing() -> None:
    chosen = choose_sign_in(
        {"ANTHROPIC_AUTH_TOKEN": "gw", "ANTHROPIC_BASE_URL": "https://llm.example.com"}
    )
    assert chosen is not None
    assert (chosen.mode, chosen.api_url) == ("gateway", "https://llm.example.com")
    with pytest.raises(ConfigError, match="ANTHROPIC_BASE_URL") as raised:
        choose_sign_in({"ANTHROPIC_AUTH_TOKEN": "gw"})
    assert "LLM gateway" in raised.value.problem


def test_bedrock_and_vertex_forward_to_their_regional_endpoints() -> None:
    bedrock = choose_sign_in({**EVERYTHING, "CLAUDE_CODE_USE_BEDROCK": "1"})
    assert bedrock is not None
    assert bedrock.mode == "bedrock"
    assert bedrock.api_url == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    assert "ANTHROPIC_API_KEY" not in bedrock.environment
    assert bedrock.secrets == ("aws-secret",)
    vertex = choose_sign_in(
        {
            "CLAUDE_CODE_USE_VERTEX": "true",
            "CLOUD_ML_REGION": "us-east5",
            "ANTHROPIC_VERTEX_PROJECT_ID": "proj",
            "GOOGLE_APPLICATION_CREDENTIALS": "/creds.json",
        }
    )
    assert vertex is not None
    assert vertex.api_url == "https://us-east5-aiplatform.googleapis.com"
    assert vertex.readable == ("/creds.json",)
    assert api_url_of({"CLAUDE_CODE_USE_VERTEX": "1", "CLOUD_ML_REGION": "global"}) == (
        "https://aiplatform.googleapis.com"
    )
    with pytest.raises(ConfigError, match="CLOUD_ML_REGION, ANTHROPIC_VERTEX_PROJECT_ID"):
        choose_sign_in({"CLAUDE_CODE_USE_VERTEX": "1"})


def test_an_explicit_mode_wins_and_must_have_what_it_needs() -> None:
    chosen = choose_sign_in(EVERYTHING, mode="oauth_token")
    assert chosen is not None
    assert chosen.mode == "oauth_token"
    with pytest.raises(ConfigError, match="claude setup-token"):
        choose_sign_in({"ANTHROPIC_API_KEY": "k"}, mode="oauth_token")
    with pytest.raises(ConfigError, match="not one of"):
        choose_sign_in({}, mode="magic")


def test_a_key_helper_travels_as_a_setting_not_a_key() -> None:
    chosen = choose_sign_in({}, api_key_helper="vault read -field=key secret/claude")
    assert chosen is not None
    assert chosen.mode == "api_key_helper"
    assert chosen.environment == {API_KEY_HELPER_VARIABLE: "vault read -field=key secret/claude"}
    assert chosen.secrets == ()


def test_nothing_set_is_no_sign_in_and_a_bad_url_is_refused() -> None:
    assert choose_sign_in({}) is None
    assert choose_sign_in({"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}) is None
    with pytest.raises(ConfigError, match="not an http"):
        choose_sign_in({"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "file:///etc/passwd"})


@given(
    st.dictionaries(
        st.sampled_from(sorted(SIGN_IN_VARIABLES)), st.text(min_size=1, max_size=8), max_size=12
    ),
    st.sampled_from(["auto", "api_key", "oauth_token", "gateway", "bedrock", "vertex"]),
)
def test_whatever_is_set_only_the_chosen_modes_variables_pass_and_their_secrets_are_known(
    variables: dict[str, str], mode: str
) -> None:
    problem = ""
    try:
        chosen = choose_sign_in(variables, mode=mode)
    except ConfigError as error:
        chosen, problem = None, error.problem
    if chosen is None:
        # Nothing set up (auto), or a mode that cannot work and says why.
        assert problem or mode == "auto"
        return
    assert set(chosen.environment) <= set(variables)
    assert all(chosen.environment[k] == variables[k] for k in chosen.environment)
    assert set(chosen.secrets) <= set(secrets_among(variables))
    assert set(chosen.secrets) == set(secrets_among(chosen.environment))
