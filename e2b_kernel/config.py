"""Configuration of a sandbox session: traitlets whose defaults come from environment variables.

Three layers agree for free: environment variables (the defaults below), ``--SessionConfig.x=``
on a kernel's command line, and Jupyter config files. Every value is checked when the config
is built, so a bad value fails once with a message naming the variable and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default
from traitlets.config import Configurable

from .errors import ConfigurationError

__all__ = [
    "SECRET_NAMES",
    "SessionConfig",
    "check_env_vars",
    "parse_metadata",
    "parse_names",
    "parse_pairs",
]

# Never forwarded into a sandbox, whatever the configuration says (the last one is the key of a
# separately started `e2b-kernel local` service).
SECRET_NAMES = frozenset({"E2B_API_KEY", "E2B_ACCESS_TOKEN", "E2B_KERNEL_LOCAL_API_KEY"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_names(text: str) -> list[str]:
    """Parse a comma separated list of environment variable names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """Turn ``KEY=VALUE`` strings into a dict; the ``ValueError`` names ``what`` and the item.

    The one parser for every ``KEY=VALUE`` the user types: ``E2B_KERNEL_METADATA``,
    ``%%e2b --env``, ``%e2b env`` and ``e2b-kernel sandboxes --metadata``.
    """
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} expects KEY=VALUE, got {item.strip()!r}")
        result[key.strip()] = value
    return result


def parse_metadata(text: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` into a dict; raise ``ValueError`` naming a malformed pair."""
    pairs = parse_pairs((p for p in text.split(",") if p.strip()), "metadata")
    return {key: value.strip() for key, value in pairs.items()}


def check_env_vars(env: Mapping[str, Any], what: str) -> dict[str, str]:
    """Validate variables bound for a sandbox: real names, str values, no secret.

    Raises ``ValueError`` naming ``what`` (for example ``--env`` or ``request["env_vars"]``)
    and the offending name, so each front end shows the same rule in its own words.
    """
    checked: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"{what} must map str names to str values, got {key!r}: {value!r}")
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(
                f"{what}: {key!r} is not a variable name (letters, digits and _, not starting "
                "with a digit)"
            )
        if "\0" in value:
            raise ValueError(f"{what}: the value of {key} contains a NUL character")
        if key in SECRET_NAMES:
            raise ValueError(f"{what}: {key} may not be sent into a sandbox")
        checked[key] = value
    return checked


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def _env_number(name: str, kind: type, fallback: Any) -> Any:
    raw = _env(name)
    if raw is None:
        return fallback
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} is not a valid number of seconds; set it to e.g. {name}=300"
        ) from None


class SessionConfig(Configurable):
    """Settings of one sandbox session (kernel, magic or executor)."""

    backend = Enum(
        ["auto", "cloud", "local"],
        help="Where sandboxes run: 'cloud' (E2B, needs E2B_API_KEY), 'local' (a private local "
        "service), or 'auto' (cloud when E2B_API_KEY is set). Env: E2B_KERNEL_BACKEND.",
    ).tag(config=True)
    template = Unicode(help="Sandbox template. Env: E2B_KERNEL_TEMPLATE.").tag(config=True)
    sandbox_timeout = Int(
        help="Sandbox timeout in seconds; refreshed while the session lives. "
        "Env: E2B_KERNEL_SANDBOX_TIMEOUT."
    ).tag(config=True)
    cell_timeout = Float(
        None,
        allow_none=True,
        help="Per-cell timeout in seconds (none by default). Env: E2B_KERNEL_CELL_TIMEOUT.",
    ).tag(config=True)
    idle = Enum(
        ["keepalive", "pause"],
        help="When idle, keep the sandbox alive or let it pause (auto-resumed on the next cell). "
        "Env: E2B_KERNEL_IDLE.",
    ).tag(config=True)
    forward_env = List(
        Unicode(),
        help="Names of local environment variables to copy into the sandbox. "
        "Env: E2B_KERNEL_FORWARD_ENV (comma separated).",
    ).tag(config=True)
    metadata = Dict(
        value_trait=Unicode(),
        help="Sandbox metadata. Env: E2B_KERNEL_METADATA ('k=v,k2=v2').",
    ).tag(config=True)
    domain = Unicode(
        None, allow_none=True, help="E2B domain. Env: E2B_DOMAIN (as the SDK reads it)."
    ).tag(config=True)
    keep_sandbox = Bool(
        help="Keep the sandbox at shutdown and log its id. Env: E2B_KERNEL_KEEP_SANDBOX=1."
    ).tag(config=True)
    transport = Enum(
        ["auto", "jupyter", "execute"],
        help="How cells reach the sandbox: 'jupyter' (the sandbox's own Jupyter Server on port "
        "8888, every Jupyter message relayed), 'execute' (E2B's /execute; no stdin, comms, "
        "clear_output or display updates), or 'auto' (jupyter when the sandbox's Jupyter Server "
        "answers, else execute). Env: E2B_KERNEL_TRANSPORT.",
    ).tag(config=True)
    jupyter_url = Unicode(
        None,
        allow_none=True,
        help="Reach the Jupyter Server of the jupyter transport at this base URL instead of the "
        "sandbox's port 8888 (development and tests: a server started on loopback). "
        "Env: E2B_KERNEL_JUPYTER_URL.",
    ).tag(config=True)
    trust_outputs = Bool(
        help="Show sandbox outputs that would run code in the browser (JavaScript, scripts and "
        "event handlers in HTML, SVG and Markdown, widget JavaScript). Off by default: such "
        "code runs outside the sandbox, with the rights of your Jupyter Server. "
        "Env: E2B_KERNEL_TRUST_OUTPUTS=1.",
    ).tag(config=True)
    local_isolation = Enum(
        ["auto", "none"],
        help="Isolation of the private local service's sandboxes: 'auto' (Linux namespaces; "
        "refuse to start where they are impossible) or 'none' (explicitly no isolation, shown "
        "wherever the backend is). Env: E2B_KERNEL_LOCAL_ISOLATION.",
    ).tag(config=True)

    @default("backend")
    def _backend_default(self) -> str:
        return (_env("E2B_KERNEL_BACKEND") or "auto").lower()

    @default("template")
    def _template_default(self) -> str:
        return _env("E2B_KERNEL_TEMPLATE") or "code-interpreter-v1"

    @default("sandbox_timeout")
    def _sandbox_timeout_default(self) -> int:
        return int(_env_number("E2B_KERNEL_SANDBOX_TIMEOUT", int, 300))

    @default("cell_timeout")
    def _cell_timeout_default(self) -> float | None:
        value = _env_number("E2B_KERNEL_CELL_TIMEOUT", float, None)
        return None if value is None or value <= 0 else float(value)

    @default("idle")
    def _idle_default(self) -> str:
        return (_env("E2B_KERNEL_IDLE") or "keepalive").lower()

    @default("forward_env")
    def _forward_env_default(self) -> list[str]:
        return parse_names(_env("E2B_KERNEL_FORWARD_ENV") or "")

    @default("metadata")
    def _metadata_default(self) -> dict[str, str]:
        raw = _env("E2B_KERNEL_METADATA") or ""
        try:
            return parse_metadata(raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"E2B_KERNEL_METADATA is malformed ({exc}); use 'key=value,key2=value2'"
            ) from None

    @default("domain")
    def _domain_default(self) -> str | None:
        return _env("E2B_DOMAIN")

    @default("keep_sandbox")
    def _keep_sandbox_default(self) -> bool:
        return (_env("E2B_KERNEL_KEEP_SANDBOX") or "").lower() in {"1", "true", "yes", "on"}

    @default("trust_outputs")
    def _trust_outputs_default(self) -> bool:
        return (_env("E2B_KERNEL_TRUST_OUTPUTS") or "").lower() in {"1", "true", "yes", "on"}

    @default("transport")
    def _transport_default(self) -> str:
        return (_env("E2B_KERNEL_TRANSPORT") or "auto").lower()

    @default("jupyter_url")
    def _jupyter_url_default(self) -> str | None:
        url = _env("E2B_KERNEL_JUPYTER_URL")
        return url.rstrip("/") if url else None

    @default("local_isolation")
    def _local_isolation_default(self) -> str:
        return (_env("E2B_KERNEL_LOCAL_ISOLATION") or "auto").lower()

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
            self.check()
        except TraitError as exc:
            raise ConfigurationError(_explain(exc)) from None

    @classmethod
    def builtin_defaults(cls, **kwargs: Any) -> SessionConfig:
        """A config that reads no environment variable (used when the environment is bad)."""
        values: dict[str, Any] = {
            "backend": "local",
            "template": "code-interpreter-v1",
            "sandbox_timeout": 300,
            "cell_timeout": None,
            "idle": "keepalive",
            "forward_env": [],
            "metadata": {},
            "domain": None,
            "keep_sandbox": False,
            "trust_outputs": False,
            "local_isolation": "auto",
            "transport": "auto",
            "jupyter_url": None,
        }
        return cls(**{**values, **kwargs})

    def check(self) -> None:
        """Read and validate every value now, so errors surface at creation."""
        for name in self.trait_names(config=True):
            getattr(self, name)
        if self.sandbox_timeout < 1:
            raise ConfigurationError(
                f"sandbox timeout must be at least 1 second, got {self.sandbox_timeout}; "
                "set E2B_KERNEL_SANDBOX_TIMEOUT to e.g. 300"
            )
        secret = SECRET_NAMES.intersection(self.forward_env)
        if secret:
            raise ConfigurationError(
                f"{', '.join(sorted(secret))} may not be forwarded into a sandbox; "
                "remove it from E2B_KERNEL_FORWARD_ENV"
            )

    def resolved_backend(self, environ: dict[str, str] | None = None) -> str:
        """Return 'cloud' or 'local': 'auto' means cloud exactly when E2B_API_KEY is set."""
        if self.backend != "auto":
            return str(self.backend)
        env = os.environ if environ is None else environ
        return "cloud" if env.get("E2B_API_KEY") else "local"

    def forwarded_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """Return the named variables that are set locally, to be set in the sandbox."""
        env = os.environ if environ is None else environ
        # check() ran at creation, but forward_env may have been assigned since.
        names = [name for name in self.forward_env if name not in SECRET_NAMES]
        return {name: env[name] for name in names if name in env}

    @property
    def keepalive_interval(self) -> float:
        """Seconds between refreshes of the sandbox timeout: a third of it, at most a minute."""
        return max(0.5, min(60.0, self.sandbox_timeout / 3))


_ENV_OF = {
    "backend": "E2B_KERNEL_BACKEND",
    "idle": "E2B_KERNEL_IDLE",
    "template": "E2B_KERNEL_TEMPLATE",
    "local_isolation": "E2B_KERNEL_LOCAL_ISOLATION",
    "transport": "E2B_KERNEL_TRANSPORT",
}


def _explain(exc: TraitError) -> str:
    """Turn a traitlets validation error into a message naming the variable to fix."""
    text = str(exc)
    for trait, env_name in _ENV_OF.items():
        if f"'{trait}' trait" in text:
            return f"invalid {env_name} / SessionConfig.{trait}: {text}"
    return f"invalid e2b-kernel configuration: {text}"
