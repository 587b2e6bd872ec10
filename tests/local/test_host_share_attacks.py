"""Attacks on what one sandbox can take of the host beyond its cgroups: output that code in a
sandbox makes the service read, the host's file table and its TCP buffer memory.

Output: each byte a sandbox makes the service read costs the service,
shared by every sandbox and charged to none of their cgroups; where no one needs the output
whole, the service reads it at a bounded rate (``local/sandbox/sandbox_output.py``), and what
it logs of it cannot forge a log line.

Each attack floods one pipe for a few seconds from inside a sandbox and counts what it could
write: before these bounds, gigabytes (21.6 GiB in 15 s through bubblewrap's stderr, at 0.4
CPU-seconds a second of the service)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b_code_interpreter import Sandbox
from local_helpers import sdk_options, wait_for

from e2b_kernel.local import RunningService, start_subprocess
from e2b_kernel.local.sandbox.isolation import (
    DEFAULT_MAX_PIDS,
    DEFAULT_MEMORY_MB,
    TCP_BUFFER_SHARE,
    resolve_isolation,
)
from e2b_kernel.local.sandbox.sandbox_output import (
    DIAGNOSTICS_RATE,
    UNREAD_OUTPUT_RATE,
    quoted,
)

FLOOD_SECONDS = 3.0
# Pipes between the writer and the service's reads hold this much at most (a pipe's 64 KiB,
# a stream reader's buffer, a chunk in flight): what a bounded reader may add to its rate.
SLACK = 1 << 20

# Waits for /tmp/go-<name> (made once nothing else reads the target), then writes as fast as
# it can for FLOOD_SECONDS into fd `fd` of process `pid` (0: its own stdout) and records how
# much it wrote in how long.
FLOOD = textwrap.dedent(
    """
    import ctypes, json, os, sys, time
    name, pid, fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if pid:  # take the target's fd as root in a sandbox could (same uid, no capability)
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        out = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if out < 0:
            raise SystemExit(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
    else:
        out = 1
    while not os.path.exists(f"/tmp/go-{name}"):
        time.sleep(0.01)
    block, written, began = b"x" * 65536, 0, time.monotonic()
    while time.monotonic() - began < %(seconds)s:
        written += os.write(out, block)
    took = time.monotonic() - began
    with open(f"/tmp/flooded-{name}", "w") as done:
        json.dump({"written": written, "seconds": took}, done)
    """
) % {"seconds": FLOOD_SECONDS}


@pytest.fixture
def sandbox(local_service: RunningService) -> Iterator[Sandbox]:
    box = Sandbox.create(timeout=120, **sdk_options(local_service))
    try:
        box.files.write("/tmp/flood.py", FLOOD)
        yield box
    finally:
        box.kill()


def flood(box: Sandbox, name: str, pid: int, fd: int, user: str = "user") -> dict[str, float]:
    """Run the flood as ``user`` in the background (no one streaming it) and return its count."""
    handle = box.commands.run(
        f"python3 /tmp/flood.py {name} {pid} {fd}", background=True, user=user, timeout=0
    )
    handle.disconnect()
    box.files.write(f"/tmp/go-{name}", "")
    wait_for(lambda: box.files.exists(f"/tmp/flooded-{name}"), 60, f"the {name} flood")
    return json.loads(box.files.read(f"/tmp/flooded-{name}"))


def assert_read_at(result: dict[str, float], per_second: int) -> None:
    bound = per_second * (result["seconds"] + 1) + SLACK
    assert result["written"] <= bound, (
        f"{result['written'] / 2**20:.0f} MiB went into the service in {result['seconds']:.1f} s "
        f"(bounded: {bound / 2**20:.1f} MiB)"
    )


def test_output_of_a_command_no_one_streams_is_read_at_a_bounded_rate(sandbox: Sandbox) -> None:
    """``run(..., background=True)`` then ``disconnect()``: the service went on reading the
    command's output at full speed and dropping it."""
    assert_read_at(flood(sandbox, "detached", 0, 1), UNREAD_OUTPUT_RATE)


def test_root_in_a_sandbox_cannot_flood_the_service_through_bubblewraps_stderr(
    sandbox: Sandbox,
) -> None:
    """bubblewrap's pid 1 holds no capability, so root in the sandbox may take its stderr,
    whose other end is the service's."""
    assert_read_at(flood(sandbox, "pid1", 1, 2, user="root"), DIAGNOSTICS_RATE)


def test_the_sandbox_user_cannot_flood_the_service_through_the_jupyter_servers_stderr(
    sandbox: Sandbox,
) -> None:
    found = sandbox.commands.run("pgrep -o -f jupyter_server || pgrep -o -f jupyter-server")
    server = int(found.stdout.split()[0])
    assert_read_at(flood(sandbox, "jupyter", server, 2), DIAGNOSTICS_RATE)


def test_what_the_service_logs_of_sandbox_output_cannot_forge_a_record() -> None:
    forged = "bwrap: ok\n2026-01-01 WARNING e2b_kernel.local: \x1b[31mforged\x1b[0m\r\x07"
    shown = quoted(forged)
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown
    assert "\\x1b[31mforged" in shown
    assert all(line.startswith("    | ") for line in shown.splitlines()[1:])
    assert shown.splitlines()[0] == "bwrap: ok"


def test_a_sandbox_cannot_hold_more_than_an_eighth_of_the_hosts_file_table(
    sandbox: Sandbox,
) -> None:
    """Attack: open files until the host's one file table (fs.file-max) is full; then every
    process without CAP_SYS_ADMIN on the machine gets ENFILE, other sandboxes included. The
    memory cgroup does not stop it (a file costs ~256 B): only RLIMIT_NOFILE x the process
    limit does. The sandbox inherited the service's 20,000 (x 256 processes = 5.1 M, twice
    this host's table); its processes now get E2B's soft 1024 and a hard limit that keeps the
    product within an eighth of the table, which they cannot raise."""
    probe = (
        "import json, resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (10**6, 10**6)); raised = True\n"
        "except (ValueError, OSError):\n"
        "    raised = False\n"
        "print(json.dumps([soft, hard, raised]))"
    )
    file_max = int(Path("/proc/sys/fs/file-max").read_text())
    for user in ("user", "root"):
        found = sandbox.commands.run(f"python3 -c '{probe}'", user=user)
        soft, hard, raised = json.loads(found.stdout)
        assert not raised, f"{user} raised its open-files limit to a million"
        assert hard * DEFAULT_MAX_PIDS <= max(file_max // 8, 1024 * DEFAULT_MAX_PIDS), (
            f"{user}: {DEFAULT_MAX_PIDS} processes x {hard} files against a table of {file_max}"
        )
        assert soft == min(1024, hard)


# Connects pairs over loopback and fills them without reading until the kernel refuses more
# (or 192 MiB are queued); prints the bytes queued.
TCP_HOARD = textwrap.dedent(
    """
    import socket
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    kept, queued, block = [], 0, b"x" * 65536
    for _ in range(64):
        client = socket.create_connection(listener.getsockname())
        kept += [client, listener.accept()[0]]  # the accepted end never reads
        client.setblocking(False)
        while queued < 192 << 20:
            try:
                queued += client.send(block)
            except (BlockingIOError, OSError):
                break
        if queued >= 192 << 20:
            break
    print(queued)
    """
)


def test_a_sandbox_cannot_hoard_tcp_buffers_beyond_its_memory() -> None:
    """Attack: queue data on loopback connections that never read. Socket buffers come out of
    the host's one tcp_mem, past which TCP fails for every process on the machine; cgroup v1
    charged them to no group (604 MiB under a 256 MiB limit). Now v1 bounds them at a quarter
    of the sandbox's memory limit (v2 charges them to the memory limit itself)."""
    memory_mb = 128
    version = resolve_isolation("auto").cgroup_version
    if version is None:
        pytest.skip("cgroups are not writable here: no memory limit to hold socket buffers")
    service = start_subprocess(pool_size=0, memory_mb=memory_mb)
    try:
        box = Sandbox.create(timeout=120, **sdk_options(service))
        try:
            box.files.write("/tmp/hoard.py", TCP_HOARD)
            queued = int(box.commands.run("python3 /tmp/hoard.py", timeout=120).stdout)
        finally:
            box.kill()
    finally:
        service.stop()
    limit = (memory_mb << 20) // (TCP_BUFFER_SHARE if version == 1 else 1)
    assert queued <= limit * 1.5, f"{queued >> 20} MiB of TCP buffers held (limit {limit >> 20})"


def test_root_in_a_sandbox_cannot_fill_dev_and_dev_shm_is_bounded(sandbox: Sandbox) -> None:
    """/dev was a tmpfs root in the sandbox could write, outside the disk cap; now read-only.
    /dev/shm (which multiprocessing needs writable by anyone) holds at most half the
    sandbox's memory limit, so filling it cannot leave the whole limit taken by files."""
    made = sandbox.commands.run("touch /dev/hoard 2>&1; echo $?", user="root").stdout
    assert made.split()[-1] != "0", "root created a file in /dev"
    size = sandbox.commands.run("df --output=size -B1 /dev/shm | tail -1").stdout
    assert int(size) <= (DEFAULT_MEMORY_MB << 20) // 2
