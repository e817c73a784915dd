"""Configuration layers: claudecluster.yaml < CLAUDECLUSTER_* env vars < CLI flags.

Every test passes ``environ`` explicitly, so the real environment of the test process can
never change an outcome.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from claudecluster.errors import ConfigError
from claudecluster.settings import CONFIG_FILE_NAME, Settings, load_settings

API_KEY = "sk-ant-api03-test-key-0123456789"
NATS_PASSWORD = "hunter2-but-longer"


def write_config(directory: Path, text: str, name: str = CONFIG_FILE_NAME) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_without_file_or_environment_every_value_is_its_default(tmp_path: Path) -> None:
    loaded = load_settings(project_dir=tmp_path, environ={})

    assert loaded.settings == Settings()
    assert loaded.settings.nats.url is None
    assert loaded.settings.nats.port == 0
    assert loaded.settings.nats.store_dir == Path(".claudecluster/nats")
    assert loaded.settings.nats.server_binary is None
    assert loaded.settings.nats.replicas is None
    assert loaded.settings.logging.level == "INFO"
    assert loaded.settings.logging.format == "auto"
    assert loaded.settings.anthropic_api_key is None
    assert loaded.settings.secret_values() == []
    assert loaded.sources == {}
    assert loaded.config_file is None
    assert loaded.source_of("nats.url") == "default"


def test_the_config_file_in_the_project_directory_is_read_when_present(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  port: 4333\nlogging:\n  level: DEBUG\n")

    loaded = load_settings(project_dir=tmp_path, environ={})

    assert loaded.config_file == path
    assert loaded.settings.nats.port == 4333
    assert loaded.settings.logging.level == "DEBUG"
    assert loaded.sources == {"nats.port": f"file {path}", "logging.level": f"file {path}"}


def test_an_empty_config_file_leaves_every_default(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")

    loaded = load_settings(config_file=path, environ={})

    assert loaded.settings == Settings()
    assert loaded.config_file == path


def test_a_value_from_the_file_is_attributed_to_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  url: nats://file-host:4222\n")

    loaded = load_settings(config_file=path, environ={})

    assert loaded.settings.nats.url == "nats://file-host:4222"
    assert loaded.source_of("nats.url") == f"file {path}"


def test_an_env_var_overrides_the_file_for_the_same_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  url: nats://file-host:4222\n  port: 4333\n")

    loaded = load_settings(
        config_file=path, environ={"CLAUDECLUSTER_NATS__URL": "nats://env-host:4222"}
    )

    assert loaded.settings.nats.url == "nats://env-host:4222"
    assert loaded.source_of("nats.url") == "env CLAUDECLUSTER_NATS__URL"
    # Other keys of the same section still come from the file: layers merge key by key.
    assert loaded.settings.nats.port == 4333
    assert loaded.source_of("nats.port") == f"file {path}"


def test_a_flag_overrides_both_env_and_file_for_the_same_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  url: nats://file-host:4222\n")

    loaded = load_settings(
        config_file=path,
        environ={"CLAUDECLUSTER_NATS__URL": "nats://env-host:4222"},
        flags={"nats": {"url": "nats://flag-host:4222"}},
    )

    assert loaded.settings.nats.url == "nats://flag-host:4222"
    assert loaded.sources["nats.url"] == "flag --nats-url"


def test_env_vars_without_the_prefix_are_not_configuration(tmp_path: Path) -> None:
    loaded = load_settings(
        project_dir=tmp_path, environ={"NATS__URL": "nats://elsewhere:4222", "PORT": "1"}
    )

    assert loaded.settings == Settings()
    assert loaded.sources == {}


def test_lists_mappings_and_whole_sections_come_from_the_environment_as_json(
    tmp_path: Path,
) -> None:
    loaded = load_settings(
        project_dir=tmp_path,
        environ={
            "CLAUDECLUSTER_GATEWAY__MCP_ALLOWED_HOSTS": '["tools.example:*"]',
            "CLAUDECLUSTER_WORKER__REPO_REMOTES": '{"app": "git@example.com:app.git"}',
            "CLAUDECLUSTER_NATS": '{"url": "nats://section:4222", "replicas": 3}',
            # A key of its own is more specific than the same key in a section.
            "claudecluster_nats__url": "nats://key:4222",
        },
    )

    settings = loaded.settings
    assert settings.gateway.mcp_allowed_hosts == ["tools.example:*"]
    assert settings.worker.repo_remotes == {"app": "git@example.com:app.git"}
    assert (settings.nats.url, settings.nats.replicas) == ("nats://key:4222", 3)
    assert loaded.source_of("nats.url") == "env CLAUDECLUSTER_NATS__URL"
    assert loaded.source_of("nats.replicas") == "env CLAUDECLUSTER_NATS"
    assert loaded.source_of("gateway.mcp_allowed_hosts") == (
        "env CLAUDECLUSTER_GATEWAY__MCP_ALLOWED_HOSTS"
    )


def test_a_list_from_the_environment_that_is_not_json_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            project_dir=tmp_path, environ={"CLAUDECLUSTER_WORKER__COPY_FILES": ".env, .npmrc"}
        )

    assert caught.value.key == "worker.copy_files"
    assert caught.value.source == "env CLAUDECLUSTER_WORKER__COPY_FILES"
    assert "JSON" in caught.value.problem


def test_an_env_var_with_an_empty_part_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS____URL": "x"})

    assert caught.value.source == "env CLAUDECLUSTER_NATS____URL"
    assert "empty part" in caught.value.problem


def test_a_bad_value_in_the_file_names_the_dotted_key_and_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  port: not-a-number\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path, environ={})

    assert caught.value.key == "nats.port"
    assert str(path) in caught.value.source
    assert "nats.port" in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_bad_value_from_the_environment_names_the_env_var(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__PORT": "99999"})

    assert caught.value.key == "nats.port"
    assert caught.value.source == "env CLAUDECLUSTER_NATS__PORT"
    assert "65535" in caught.value.problem


def test_a_bad_value_from_a_flag_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path, environ={}, flags={"logging": {"level": "LOUD"}})

    assert caught.value.key == "logging.level"
    assert caught.value.source == "flag --logging-level"


def test_an_unknown_key_in_the_file_is_reported_as_unknown(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  colour: blue\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path, environ={})

    assert caught.value.key == "nats.colour"
    assert "unknown key" in caught.value.problem
    assert str(path) in caught.value.source


def test_an_unknown_nested_env_var_is_reported_as_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__COLOUR": "blue"})

    assert caught.value.key == "nats.colour"
    assert caught.value.source == "env CLAUDECLUSTER_NATS__COLOUR"
    assert "unknown key" in caught.value.problem


def test_several_problems_are_counted_in_the_first_ones_message(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  port: -1\n  replicas: 9\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path, environ={})

    assert "(and 1 more problem)" in caught.value.problem


def test_malformed_yaml_is_a_config_error_naming_the_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "nats:\n  url: nats://a:4222\n   port: 3\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path, environ={})

    assert caught.value.source == f"file {path}"
    assert "not valid YAML" in caught.value.problem
    assert "line 3" in caught.value.problem


def test_a_yaml_list_at_the_top_level_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "- nats\n- logging\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path, environ={})

    assert caught.value.source == f"file {path}"
    assert "mapping" in caught.value.problem


def test_an_explicit_config_file_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=missing, environ={})

    assert caught.value.source == f"file {missing}"
    assert "cannot read" in caught.value.problem


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4222",
        "127.0.0.1:4222",
        "nats://a:4222,https://b:4222",
    ],
)
def test_a_url_that_is_not_a_nats_url_is_rejected(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__URL": url})

    assert caught.value.key == "nats.url"
    assert caught.value.source == "env CLAUDECLUSTER_NATS__URL"


def test_every_nats_scheme_is_accepted_in_a_comma_separated_url(tmp_path: Path) -> None:
    url = "nats://a:4222, tls://b:4222,ws://c:8080,wss://d:443"

    loaded = load_settings(project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__URL": url})

    assert loaded.settings.nats.url == url


def test_the_anthropic_api_key_is_read_into_a_secret(tmp_path: Path) -> None:
    loaded = load_settings(project_dir=tmp_path, environ={"ANTHROPIC_API_KEY": API_KEY})

    key = loaded.settings.anthropic_api_key
    assert isinstance(key, pydantic.SecretStr)
    assert key.get_secret_value() == API_KEY
    assert loaded.source_of("anthropic_api_key") == "env ANTHROPIC_API_KEY"
    assert API_KEY in loaded.settings.secret_values()


def test_a_password_inside_the_nats_url_is_a_secret_value(tmp_path: Path) -> None:
    url = f"nats://cluster:4222,nats://user:{NATS_PASSWORD}@127.0.0.1:4222"

    loaded = load_settings(project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__URL": url})

    assert loaded.settings.secret_values() == [NATS_PASSWORD]


def test_printing_the_settings_never_shows_the_api_key(tmp_path: Path) -> None:
    loaded = load_settings(project_dir=tmp_path, environ={"ANTHROPIC_API_KEY": API_KEY})

    renderings = [
        repr(loaded),
        str(loaded),
        repr(loaded.settings),
        str(loaded.settings),
        loaded.settings.model_dump_json(),
        loaded.model_dump_json(),
    ]
    for rendering in renderings:
        assert API_KEY not in rendering
    assert "**********" in repr(loaded.settings)


def test_a_prefixed_env_var_that_names_no_setting_is_reported_as_a_typo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path, environ={"CLAUDECLUSTER_NAST__URL": "nats://x:1"})

    assert caught.value.source == "env CLAUDECLUSTER_NAST__URL"
    assert "unknown key" in caught.value.problem


def test_a_password_in_the_nats_url_is_never_shown_in_a_repr_or_an_error(tmp_path: Path) -> None:
    secret = "hunter2-secret-pw"
    loaded = load_settings(
        project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__URL": f"nats://u:{secret}@h:4222"}
    )
    assert loaded.settings.nats.url == f"nats://u:{secret}@h:4222"
    assert secret not in repr(loaded.settings)
    assert secret not in str(loaded.settings.nats)
    with pytest.raises(ConfigError) as caught:
        load_settings(
            project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__URL": f"http://u:{secret}@h"}
        )
    assert secret not in str(caught.value)


def test_the_prefixed_api_key_wins_over_the_conventional_one(tmp_path: Path) -> None:
    loaded = load_settings(
        project_dir=tmp_path,
        environ={
            "ANTHROPIC_API_KEY": "sk-conventional-1",
            "CLAUDECLUSTER_ANTHROPIC_API_KEY": "sk-prefixed-222",
        },
    )
    key = loaded.settings.anthropic_api_key
    assert key is not None
    assert key.get_secret_value() == "sk-prefixed-222"
    assert loaded.sources["anthropic_api_key"] == "env CLAUDECLUSTER_ANTHROPIC_API_KEY"


def test_a_token_in_the_user_part_of_the_nats_url_is_a_secret(tmp_path: Path) -> None:
    loaded = load_settings(
        project_dir=tmp_path, environ={"CLAUDECLUSTER_NATS__URL": "nats://s3cr3t-token-x@h:4222"}
    )
    assert loaded.settings.secret_values() == ["s3cr3t-token-x"]
    assert "s3cr3t-token-x" not in repr(loaded.settings)


def test_the_api_base_url_is_read_under_both_names_and_the_prefix_wins(tmp_path: Path) -> None:
    loaded = load_settings(
        project_dir=tmp_path,
        environ={
            "ANTHROPIC_BASE_URL": "http://conventional:1",
            "CLAUDECLUSTER_ANTHROPIC_BASE_URL": "http://prefixed:2",
        },
    )
    assert loaded.settings.anthropic_base_url == "http://prefixed:2"
    assert loaded.sources["anthropic_base_url"] == "env CLAUDECLUSTER_ANTHROPIC_BASE_URL"
    plain = load_settings(project_dir=tmp_path, environ={"ANTHROPIC_BASE_URL": "http://c:1"})
    assert plain.sources["anthropic_base_url"] == "env ANTHROPIC_BASE_URL"


def test_only_the_chosen_sign_in_reaches_claude_code_and_every_credential_is_redacted() -> None:
    environ = {
        "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-subscription",
        "ANTHROPIC_AUTH_TOKEN": "gateway-bearer-token",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        "AWS_REGION": "eu-west-1",
        "CLAUDECLUSTER_CLAUDE__SIGN_IN": "oauth_token",
    }
    settings = load_settings(environ=environ).settings
    assert settings.api_environment() == {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-subscription"}
    # Whichever mode runs, no credential of the environment ever reaches a log unredacted.
    assert {"sk-ant-oat01-subscription", "gateway-bearer-token", "aws-secret-value"} <= set(
        settings.secret_values()
    )
    bedrock = load_settings(environ={**environ, "CLAUDECLUSTER_CLAUDE__SIGN_IN": "bedrock",
                                     "CLAUDE_CODE_USE_BEDROCK": "1"}).settings  # fmt: skip
    assert bedrock.api_environment() == {
        "CLAUDE_CODE_USE_BEDROCK": "1",
        "AWS_REGION": "eu-west-1",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    }


def test_a_sign_in_mode_that_does_not_exist_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"CLAUDECLUSTER_CLAUDE__SIGN_IN": "password"})
    assert raised.value.key == "claude.sign_in"
    assert "not one of" in raised.value.problem
