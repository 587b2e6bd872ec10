"""Isolation claims, checked from inside sandboxes with commands.run (unmodified SDK)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from e2b import Sandbox
from e2b.sandbox.commands.command_handle import CommandExitException
from local_helpers import host_pids_with, marker, sandbox_host_dir, sdk_options, wait_for

from e2b_kernel.local import RunningService, start_in_thread
from e2b_kernel.local.sandbox.bwrap import RUNTIME_ROOT


def _connect_script(service: RunningService) -> str:
    port = urlparse(service.url).port
    return (
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
        f"{port}), timeout=5); print('connected')\""
    )


def test_isolation_is_described(local_service: RunningService) -> None:
    assert local_service.isolation.startswith("bubblewrap namespaces")
    assert "net" in local_service.isolation


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    return [line.split()[3].split("/")[0] for line in out.stdout.splitlines()]


def test_no_network_by_default(local_service: RunningService, sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as refused:
        sbx.commands.run(_connect_script(local_service))
    assert "ConnectionRefusedError" in refused.value.stderr or "OSError" in refused.value.stderr
    lines = sbx.commands.run("cat /proc/net/dev").stdout.splitlines()[2:]
    assert [line.split(":")[0].strip() for line in lines] == ["lo"]


def test_internet_access_never_reaches_the_service(local_service: RunningService) -> None:
    sandbox = Sandbox.create(timeout=60, allow_internet_access=True, **sdk_options(local_service))
    try:
        assert sandbox.get_info().allow_internet_access is True
        assert "default via" in sandbox.commands.run("ip route").stdout  # a user-mode network
        # Neither its own loopback, nor the host's addresses, nor the gateway lead to the host.
        for host in ["127.0.0.1", "10.0.2.2", *_host_addresses()]:
            script = _connect_script(local_service).replace("127.0.0.1", host)
            with pytest.raises(CommandExitException):
                sandbox.commands.run(script)
    finally:
        sandbox.kill()


@pytest.mark.parametrize("target", ["/etc/e2bk-probe", "/work/e2bk-probe", "/usr/e2bk-probe"])
def test_host_filesystem_is_read_only(sbx: Sandbox, target: str) -> None:
    with pytest.raises(CommandExitException) as denied:
        sbx.commands.run(f"touch {target}")
    # /work exists inside only when the Python environment is bound from under it.
    refusals = ("Read-only file system", "No such file or directory")
    assert any(refusal in denied.value.stderr for refusal in refusals), denied.value.stderr
    assert not os.path.exists(target)


def test_home_and_tmp_are_private_and_writable(sbx: Sandbox) -> None:
    result = sbx.commands.run("touch /home/user/w /tmp/w && ls /tmp && echo ok")
    assert result.stdout.endswith("ok\n")
    assert not os.path.exists("/tmp/w")
    # The host's /tmp (with the service's state) is not visible inside.
    assert RUNTIME_ROOT.parent.name not in result.stdout


def test_sysfs_shows_the_cpus_but_not_the_hosts_devices(sbx: Sandbox) -> None:
    """The host's interfaces, MAC addresses, traffic counters and disks stay out of sight,
    even of root inside; the CPU topology that libraries read is there, for every user."""
    host_macs = [p.read_text().strip() for p in Path("/sys/class/net").glob("*/address")]
    host_macs = [mac for mac in host_macs if mac.strip("0:")]
    assert host_macs, "this host shows no interface to hide"
    seen = sbx.commands.run(
        "cat /sys/class/net/*/address /sys/devices/*/*/net/*/address "
        "/sys/devices/virtual/net/*/address 2>/dev/null; ls /sys/block /sys/class 2>&1; true",
        user="root",
    ).stdout
    assert not [mac for mac in host_macs if mac in seen], seen
    assert "No such file or directory" in seen
    for user in ("user", "root"):
        online = sbx.commands.run("cat /sys/devices/system/cpu/online", user=user).stdout
        assert online.strip() == Path("/sys/devices/system/cpu/online").read_text().strip()


def test_host_processes_are_invisible_and_unsignallable(sbx: Sandbox) -> None:
    me = os.getpid()
    listing = sbx.commands.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "pytest" not in listing
    count = int(sbx.commands.run("ls -d /proc/[0-9]* | wc -l").stdout)
    assert count < 20
    with pytest.raises(CommandExitException):
        sbx.commands.run(f"kill -0 {me}")


def test_one_sandbox_cannot_see_another(local_service: RunningService, sbx: Sandbox) -> None:
    other = Sandbox.create(timeout=60, **sdk_options(local_service))
    try:
        other.files.write("/home/user/secret.txt", "top secret")
        other_dir = sandbox_host_dir(other.sandbox_id)
        assert other_dir is not None
        host_home = other_dir / "disk/home"
        assert sbx.commands.run("ls /home/user").stdout.count("secret.txt") == 0
        with pytest.raises(CommandExitException):
            sbx.commands.run(f"cat {host_home}/secret.txt")
        with pytest.raises(CommandExitException):
            sbx.commands.run("ls /home/user/../*/secret.txt")
    finally:
        other.kill()


def test_service_secrets_do_not_reach_the_sandbox(sbx: Sandbox) -> None:
    env_dump = sbx.commands.run("cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'").stdout
    assert "E2B_API_KEY" not in env_dump
    assert "E2B_API_KEY" not in sbx.commands.run("env").stdout


_FORK_UNTIL_REFUSED = """
import os, signal, time
children = []
try:
    while len(children) < 200:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except BlockingIOError:
    print("refused after", len(children))
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


@pytest.fixture(scope="module")
def small_service() -> Iterator[RunningService]:
    service = start_in_thread(memory_mb=128, max_pids=64)
    try:
        yield service
    finally:
        service.stop()


def test_memory_and_process_limits(small_service: RunningService) -> None:
    if "cgroups not writable" in small_service.isolation:
        pytest.skip("cgroups are not writable on this machine, so no limits are applied")
    assert "memory 128 MiB, 64 processes" in small_service.isolation
    sandbox = Sandbox.create(timeout=120, **sdk_options(small_service))
    try:
        with pytest.raises(CommandExitException) as oom:
            sandbox.commands.run("python3 -c \"b = bytearray(400 * 1024 * 1024); print('no')\"")
        assert "no" not in oom.value.stdout
        forks = sandbox.commands.run(f"python3 -c '{_FORK_UNTIL_REFUSED}'")
        started = int(forks.stdout.split()[-1])
        assert 0 < started < 64
        assert sandbox.commands.run("echo alive").stdout == "alive\n"
    finally:
        sandbox.kill()


def test_kill_leaves_no_process_behind(local_service: RunningService) -> None:
    sandbox = Sandbox.create(timeout=60, **sdk_options(local_service))
    tag = marker()
    # A daemon that escapes its parent and session must still die with the sandbox.
    sandbox.commands.run(f"setsid bash -c 'exec -a {tag} sleep 600' >/dev/null 2>&1 &")
    wait_for(lambda: bool(host_pids_with(tag)), what="the daemon to start")
    assert sandbox.kill()
    wait_for(lambda: not host_pids_with(tag), what="the daemon to die with its sandbox")


def test_host_user_dirs_are_hidden(sbx: Sandbox) -> None:
    # Only the service's own Python (bound back read-only) is visible under /root.
    visible = sbx.commands.run("find /root -maxdepth 1 -mindepth 1", user="root").stdout.split()
    assert all(os.path.realpath(sys.base_prefix).startswith(p) for p in visible)
    assert sbx.commands.run("ls -A /home").stdout.split() == ["user"]
