"""A real E2B Python kernel process driven through jupyter_client, for integration tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from e2b_kernel.cli.install import kernelspec_dir

KERNELSPEC_DIR = kernelspec_dir()


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without E2B settings, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "PYTEST_"))}
    env.update(overrides)
    return env


def write_kernelspec(root: Path, interrupt_mode: str) -> KernelSpecManager:
    """A private copy of the e2b-python kernelspec with the given interrupt mode."""
    spec = json.loads(KERNELSPEC_DIR.joinpath("kernel.json").read_text())
    spec["interrupt_mode"] = interrupt_mode
    folder = root / "kernels" / "e2b-python"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root / "kernels")])


class Output:
    """One IOPub output message with the time it arrived."""

    def __init__(self, msg: dict[str, Any], at: float) -> None:
        self.msg_type: str = msg["msg_type"]
        self.content: dict[str, Any] = msg["content"]
        self.at = at

    def __repr__(self) -> str:
        return f"Output({self.msg_type}, {self.content!r})"


class Kernel:
    """Start, drive and stop one kernel process."""

    def __init__(self, tmp_path: Path, env: dict[str, str], interrupt_mode: str = "signal") -> None:
        self.env = env
        self.km = KernelManager(
            kernel_name="e2b-python",
            kernel_spec_manager=write_kernelspec(tmp_path / "spec", interrupt_mode),
            connection_file=str(tmp_path / "kernel-connection.json"),
        )
        self.km.start_kernel(env=env)
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        # Messages read while waiting for another request's, kept for their own request: a
        # request whose idle arrived while another was collected is collected all the same.
        self._iopub_kept: dict[str, list[tuple[dict[str, Any], float]]] = {}
        self._replies_kept: dict[str, dict[str, Any]] = {}

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)  # type: ignore[union-attr]

    def send(self, code: str, **kwargs: Any) -> str:
        return str(self.kc.execute(code, **kwargs))

    def collect(self, msg_id: str, timeout: float = 90) -> tuple[dict[str, Any], list[Output]]:
        """Outputs of one request until its 'idle' status, then its reply."""
        outputs: list[Output] = []
        deadline = time.monotonic() + timeout
        kept = self._iopub_kept.pop(msg_id, [])
        while True:
            if kept:
                msg, at = kept.pop(0)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no idle status within {timeout} s; got {outputs}")
                try:
                    msg = self.kc.get_iopub_msg(timeout=remaining)
                except Empty:
                    continue
                at = time.monotonic()
                if msg["parent_header"].get("msg_id") != msg_id:
                    self._keep(msg, at)
                    continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    break
                continue
            if msg["msg_type"] != "execute_input":
                outputs.append(Output(msg, at))
        reply = self.reply(msg_id, timeout=max(1.0, deadline - time.monotonic()))
        return reply, outputs

    def _keep(self, msg: dict[str, Any], at: float) -> None:
        parent = msg["parent_header"].get("msg_id")
        if parent:
            self._iopub_kept.setdefault(parent, []).append((msg, at))

    def reply(self, msg_id: str, timeout: float = 90) -> dict[str, Any]:
        if msg_id in self._replies_kept:
            return self._replies_kept.pop(msg_id)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            parent = msg["parent_header"].get("msg_id")
            if parent == msg_id:
                return dict(msg["content"])
            if parent:
                self._replies_kept[parent] = dict(msg["content"])

    def run(self, code: str, timeout: float = 90) -> tuple[dict[str, Any], list[Output]]:
        return self.collect(self.send(code), timeout)

    def value(self, expression: str, timeout: float = 90) -> str:
        """The text/plain of an expression's execute_result."""
        reply, outputs = self.run(expression, timeout)
        assert reply["status"] == "ok", (reply, outputs)
        results = [o for o in outputs if o.msg_type == "execute_result"]
        assert len(results) == 1, outputs
        return str(results[0].content["data"]["text/plain"])

    def wait_for_kernel_status(self, state: str, timeout: float = 60) -> None:
        """Block until a status that answers no request (the Jupyter Server's own notice about
        the kernel process, as ``restarting``) says ``state``."""
        self._wait_for_iopub(
            lambda msg: (
                msg["msg_type"] == "status"
                and not msg["parent_header"]
                and msg["content"]["execution_state"] == state
            ),
            timeout,
            f"no {state!r} status",
        )

    def wait_for_stream(self, msg_id: str, text: str, timeout: float = 60) -> None:
        """Block until a stream output of ``msg_id`` contains ``text``."""
        self._wait_for_iopub(
            lambda msg: (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "stream"
                and text in msg["content"]["text"]
            ),
            timeout,
            f"{text!r} was not printed",
        )

    def _wait_for_iopub(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float, missing: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.5)
            except Empty:
                continue
            if wanted(msg):
                return
            self._keep(msg, time.monotonic())
        raise TimeoutError(f"{missing} within {timeout} s")

    def banner(self) -> str:
        return str(self.kc.kernel_info(reply=True, timeout=60)["content"]["banner"])

    def shutdown(self) -> None:
        """Polite shutdown; asserts the kernel process exits on its own, promptly."""
        self.kc.shutdown()
        deadline = time.monotonic() + 30
        while self.km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = self.km.is_alive()
        self.close()
        assert not alive, "the kernel did not exit after shutdown_request"

    def close(self) -> None:
        """Stop the kernel politely if it still runs (so its sandbox goes at once), then clean."""
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=not self.km.is_alive())
        self.km.cleanup_resources()
