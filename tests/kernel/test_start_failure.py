"""A kernel process that cannot start ends at once, saying why, instead of hanging."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .harness import Kernel, clean_env

PORT_NAMES = ("shell", "iopub", "stdin", "control", "hb")


def test_a_port_taken_before_the_kernel_binds_it_ends_the_kernel(tmp_path: Path) -> None:
    """ipykernel alone waits forever on its ZeroMQ context at exit (the socket that failed to
    bind stays open), and jupyter_client gives up only after 60 s."""
    holders = [socket.create_server(("127.0.0.1", 0)) for _ in PORT_NAMES]
    ports = [holder.getsockname()[1] for holder in holders]
    for holder in holders[:1] + holders[2:]:
        holder.close()  # the iopub port stays taken
    connection = tmp_path / "kernel-1.json"
    info = {f"{name}_port": port for name, port in zip(PORT_NAMES, ports, strict=True)}
    info |= {"transport": "tcp", "ip": "127.0.0.1", "key": "k", "signature_scheme": "hmac-sha256"}
    connection.write_text(json.dumps(info))
    env = clean_env(E2B_KERNEL_BACKEND="cloud", JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    kernel = subprocess.Popen(
        [sys.executable, "-m", "e2b_kernel", "-f", str(connection)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = kernel.communicate(timeout=60)
    finally:
        kernel.kill()
        holders[1].close()
    assert kernel.returncode == 1
    assert "e2b-python: the kernel could not start" in stderr
    assert f"Address already in use (addr='tcp://127.0.0.1:{ports[1]}')" in stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another host user (setpriv) needs root")
def test_a_kernel_says_why_when_its_host_folder_is_another_users(tmp_path: Path) -> None:
    """The private service's lease and state live in this user's folder of the temp folder;
    made first by another user, it is refused, and the first cell says so and how to fix it."""
    shared_tmp = Path(tempfile.mkdtemp(prefix="e2bk-shared-tmp-"))  # pytest's is root's only
    shared_tmp.chmod(0o1777)
    squatted = shared_tmp / f"e2b-kernel-{os.geteuid()}"
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    subprocess.run([*as_nobody, "mkdir", str(squatted)], check=True)
    kernel = Kernel(tmp_path, clean_env(TMPDIR=str(shared_tmp), E2B_KERNEL_BACKEND="local"))
    try:
        reply, outputs = kernel.run("1 + 1")
        assert reply["status"] == "error"
        shown = "\n".join(
            str(out.content.get("text", "")) + "\n".join(out.content.get("traceback", []))
            for out in outputs
        )
        assert f"{squatted} belongs to uid 65534" in shown and "TMPDIR" in shown, shown
        assert "Traceback (most recent call last)" not in shown
    finally:
        kernel.shutdown()
        kernel.close()
        shutil.rmtree(shared_tmp)
