"""The sandbox: bubblewrap, the agent inside it, its limits and its network."""

from .runtime import SANDBOX_HOME, LocalSandbox, SandboxKilled, SandboxStartError

__all__ = ["SANDBOX_HOME", "LocalSandbox", "SandboxKilled", "SandboxStartError"]
