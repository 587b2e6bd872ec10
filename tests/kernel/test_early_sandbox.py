"""A kernel started against a running service asks for its sandbox as its process starts
(``backends/early_sandbox.py``); these tests hold a real kernel process to using that sandbox,
and to deleting it when its configuration files want another one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from e2b_kernel.local import RunningService

from .harness import Kernel, clean_env

StartKernel = Callable[..., Kernel]
Tagged = Callable[[str], dict[str, dict[str, str]]]  # the tagged_sandboxes fixture


def _kernel_in_sandbox(
    service: RunningService, start_kernel: StartKernel, tmp_path: Path, config: str = ""
) -> tuple[str, str]:
    """Start a kernel against ``service`` with metadata unique to the test in its environment
    (and ``config`` in its ipython_kernel_config.py); return that value and its sandbox's id."""
    probe = uuid.uuid4().hex
    profile = tmp_path / "ipy" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(config.replace("PROBE", repr(probe)))
    env = clean_env(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), IPYTHONDIR=str(tmp_path / "ipy"))
    env.update(service.sdk_env(), E2B_KERNEL_BACKEND="cloud", E2B_KERNEL_METADATA=f"probe={probe}")
    kernel = start_kernel(env)
    return probe, kernel.value("__import__('os').environ['E2B_SANDBOX_ID']").strip("'")


def _wait_until_only(tagged: Tagged, probe: str, sandbox_id: str, metadata: dict[str, str]) -> None:
    """Wait until the kernel's sandbox, with ``metadata``, is the only one tagged ``probe``."""
    deadline = time.monotonic() + 30
    while (running := tagged(probe)) != {sandbox_id: metadata}:
        assert time.monotonic() < deadline, f"still running: {running}"
        time.sleep(0.1)  # polled: the service's list is the only way to see a sandbox go


def test_the_kernel_runs_in_the_one_sandbox_it_asked_for(
    local_service: RunningService,
    start_kernel: StartKernel,
    tmp_path: Path,
    tagged_sandboxes: Tagged,
) -> None:
    probe, sandbox_id = _kernel_in_sandbox(local_service, start_kernel, tmp_path)
    assert tagged_sandboxes(probe) == {sandbox_id: {"probe": probe}}


def test_a_sandbox_asked_for_before_the_config_files_were_read_is_deleted(
    local_service: RunningService,
    start_kernel: StartKernel,
    tmp_path: Path,
    tagged_sandboxes: Tagged,
) -> None:
    config = "c.SessionConfig.metadata = {'probe': PROBE, 'from': 'config'}\n"
    probe, sandbox_id = _kernel_in_sandbox(local_service, start_kernel, tmp_path, config)
    _wait_until_only(tagged_sandboxes, probe, sandbox_id, {"probe": probe, "from": "config"})


def test_a_sandbox_asked_for_is_deleted_when_the_config_files_choose_the_sdk(
    local_service: RunningService,
    start_kernel: StartKernel,
    tmp_path: Path,
    tagged_sandboxes: Tagged,
) -> None:
    # The execute transport creates its sandbox through the SDK: nothing claims the one asked for.
    config = "c.SessionConfig.transport = 'execute'\n"
    probe, sandbox_id = _kernel_in_sandbox(local_service, start_kernel, tmp_path, config)
    _wait_until_only(tagged_sandboxes, probe, sandbox_id, {"probe": probe})


# A slow machine, for the kernel process alone: importing ipykernel (before the kernel claims
# the sandbox asked for ahead) and the E2B SDK (built after the first cell) take seconds. The
# delay is in the module's execution, which holds only that module's import lock, as a slow
# import does (a finder that slept would hold every thread's imports).
_SLOW_IMPORTS = """
import importlib.machinery, sys, time

class SlowLoader:
    def __init__(self, loader, delay):
        self.loader, self.delay = loader, delay

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        time.sleep(self.delay)
        self.loader.exec_module(module)

class SlowImports:
    delays = {"ipykernel": 4.0, "e2b": 4.0}

    def find_spec(self, name, path=None, target=None):
        delay = self.delays.pop(name, None)
        spec = None if delay is None else importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = SlowLoader(spec.loader, delay)
        return spec

sys.meta_path.insert(0, SlowImports())
"""


def test_a_short_sandbox_timeout_does_not_run_out_while_the_kernel_imports(
    local_service: RunningService, start_kernel: StartKernel, tmp_path: Path
) -> None:
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(_SLOW_IMPORTS)
    env = clean_env(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), PYTHONPATH=str(slow))
    # Each import outlasts two sandbox timeouts; a refresh every 2/3 s leaves a loaded machine
    # (CI) over a second of slack (with 1 s, one refresh late by half a second lost it).
    env.update(local_service.sdk_env(), E2B_KERNEL_BACKEND="cloud", E2B_KERNEL_SANDBOX_TIMEOUT="2")
    kernel = start_kernel(env)
    first = kernel.value("__import__('os').environ['E2B_SANDBOX_ID']")
    # Idle for two sandbox timeouts while the SDK imports: the keep-alive must not wait for it.
    time.sleep(4)
    assert kernel.value("__import__('os').environ['E2B_SANDBOX_ID']") == first
