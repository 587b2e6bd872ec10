"""SessionConfig: env-var defaults, validation and backend resolution."""

from __future__ import annotations

import pytest

from e2b_kernel.config import SessionConfig, parse_metadata, parse_names
from e2b_kernel.errors import ConfigurationError

ENV_NAMES = [
    "E2B_KERNEL_BACKEND",
    "E2B_KERNEL_TEMPLATE",
    "E2B_KERNEL_SANDBOX_TIMEOUT",
    "E2B_KERNEL_CELL_TIMEOUT",
    "E2B_KERNEL_IDLE",
    "E2B_KERNEL_LOCAL_ISOLATION",
    "E2B_KERNEL_FORWARD_ENV",
    "E2B_KERNEL_METADATA",
    "E2B_KERNEL_KEEP_SANDBOX",
    "E2B_DOMAIN",
    "E2B_API_KEY",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    config = SessionConfig()
    assert config.backend == "auto"
    assert config.template == "code-interpreter-v1"
    assert config.sandbox_timeout == 300
    assert config.cell_timeout is None
    assert config.idle == "keepalive"
    assert config.forward_env == []
    assert config.metadata == {}
    assert config.domain is None
    assert config.keep_sandbox is False
    assert config.local_isolation == "auto"


def test_env_vars_set_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_KERNEL_BACKEND", "LOCAL")
    monkeypatch.setenv("E2B_KERNEL_TEMPLATE", "my-template")
    monkeypatch.setenv("E2B_KERNEL_SANDBOX_TIMEOUT", "42")
    monkeypatch.setenv("E2B_KERNEL_CELL_TIMEOUT", "2.5")
    monkeypatch.setenv("E2B_KERNEL_IDLE", "pause")
    monkeypatch.setenv("E2B_KERNEL_FORWARD_ENV", "A, B,,C")
    monkeypatch.setenv("E2B_KERNEL_METADATA", "team=ml, run = 7")
    monkeypatch.setenv("E2B_KERNEL_KEEP_SANDBOX", "yes")
    monkeypatch.setenv("E2B_DOMAIN", "example.org")
    monkeypatch.setenv("E2B_KERNEL_LOCAL_ISOLATION", "NONE")
    config = SessionConfig()
    assert config.backend == "local"
    assert config.template == "my-template"
    assert config.sandbox_timeout == 42
    assert config.cell_timeout == 2.5
    assert config.idle == "pause"
    assert config.forward_env == ["A", "B", "C"]
    assert config.metadata == {"team": "ml", "run": "7"}
    assert config.keep_sandbox is True
    assert config.domain == "example.org"
    assert config.local_isolation == "none"


def test_explicit_values_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_KERNEL_TEMPLATE", "from-env")
    assert SessionConfig(template="explicit").template == "explicit"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("E2B_KERNEL_BACKEND", "moon", "E2B_KERNEL_BACKEND"),
        ("E2B_KERNEL_IDLE", "sleep", "E2B_KERNEL_IDLE"),
        ("E2B_KERNEL_SANDBOX_TIMEOUT", "soon", "E2B_KERNEL_SANDBOX_TIMEOUT"),
        ("E2B_KERNEL_SANDBOX_TIMEOUT", "0", "E2B_KERNEL_SANDBOX_TIMEOUT"),
        ("E2B_KERNEL_CELL_TIMEOUT", "x", "E2B_KERNEL_CELL_TIMEOUT"),
        ("E2B_KERNEL_METADATA", "novalue", "E2B_KERNEL_METADATA"),
        ("E2B_KERNEL_FORWARD_ENV", "HOME,E2B_API_KEY", "E2B_API_KEY"),
        ("E2B_KERNEL_LOCAL_ISOLATION", "some", "E2B_KERNEL_LOCAL_ISOLATION"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=needle):
        SessionConfig()


def test_cell_timeout_zero_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_KERNEL_CELL_TIMEOUT", "0")
    assert SessionConfig().cell_timeout is None


def test_auto_backend_follows_the_api_key() -> None:
    config = SessionConfig()
    assert config.resolved_backend({}) == "local"
    assert config.resolved_backend({"E2B_API_KEY": "k"}) == "cloud"
    assert SessionConfig(backend="local").resolved_backend({"E2B_API_KEY": "k"}) == "local"
    assert SessionConfig(backend="cloud").resolved_backend({}) == "cloud"


def test_only_named_and_set_variables_are_forwarded() -> None:
    config = SessionConfig(forward_env=["A", "MISSING"])
    assert config.forwarded_env({"A": "1", "B": "2", "E2B_API_KEY": "secret"}) == {"A": "1"}


@pytest.mark.parametrize("secret", ["E2B_API_KEY", "E2B_ACCESS_TOKEN", "E2B_KERNEL_LOCAL_API_KEY"])
def test_secrets_are_refused_and_never_forwarded(secret: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{secret} may not be forwarded"):
        SessionConfig(forward_env=["A", secret])
    config = SessionConfig(forward_env=["A"])
    config.forward_env = ["A", secret]  # assigned after the creation-time check
    assert config.forwarded_env({"A": "1", secret: "hidden"}) == {"A": "1"}


def test_keepalive_interval_is_a_fraction_of_the_timeout() -> None:
    assert SessionConfig(sandbox_timeout=6).keepalive_interval == 2
    assert SessionConfig(sandbox_timeout=3600).keepalive_interval == 60


def test_parsers() -> None:
    assert parse_names(" a, b ,") == ["a", "b"]
    assert parse_metadata("a=1,b=x=y") == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_metadata("=1")


def test_builtin_defaults_ignore_a_broken_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_KERNEL_SANDBOX_TIMEOUT", "soon")
    config = SessionConfig.builtin_defaults()
    assert config.sandbox_timeout == 300
    assert config.backend == "local"
