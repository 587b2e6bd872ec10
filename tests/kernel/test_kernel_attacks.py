"""Attacks from cells of the E2B Python kernel on its private local sandbox (issue 9).

The same claims as tests/local/test_attacks.py, from where most users run code: a notebook cell.
One kernel serves the module; every check reads what the cell printed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.session import Session

from .harness import Kernel, clean_env

pytestmark = pytest.mark.timeout(300)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One E2B Python kernel on its private local service."""
    folder = tmp_path_factory.mktemp("attack-kernel")
    env = clean_env(JUPYTER_RUNTIME_DIR=str(folder / "runtime"), E2B_KERNEL_BACKEND="local")
    started = Kernel(folder, env)
    try:
        yield started
    finally:
        started.close()


def cell_json(kernel: Kernel, code: str) -> dict:
    """Run a cell that prints one JSON line last; that line, parsed."""
    reply, outputs = kernel.run(code, timeout=120)
    assert reply["status"] == "ok", (reply, outputs)
    text = "".join(o.content.get("text", "") for o in outputs if o.msg_type == "stream")
    return dict(json.loads(text.strip().splitlines()[-1]))


STATUS_CELL = """
import json, re, subprocess
def fields(text):
    return dict(re.findall(r'^(Cap\\w+|NoNewPrivs|Seccomp|Uid):\\s+(.*)$', text, re.M))
shell = subprocess.run(['sh', '-c', 'cat /proc/$$/status'], capture_output=True, text=True).stdout
print(json.dumps({'cell': fields(open('/proc/self/status').read()), 'shell': fields(shell),
                  'uid_map': open('/proc/self/uid_map').read()}))
"""


def test_cell_processes_have_no_capabilities(kernel: Kernel) -> None:
    found = cell_json(kernel, STATUS_CELL)
    for where in ("cell", "shell"):
        fields = found[where]
        caps = {k: v for k, v in fields.items() if k.startswith("Cap") and int(v, 16)}
        assert caps == {}, (where, fields)
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", (where, fields)


def test_cell_ids_never_map_to_host_root(kernel: Kernel) -> None:
    uid_map = cell_json(kernel, STATUS_CELL)["uid_map"]
    for line in uid_map.splitlines():
        _, outside, count = (int(x) for x in line.split())
        assert not outside <= 0 < outside + count, uid_map


@pytest.fixture
def host_markers() -> Iterator[list[Path]]:
    """Host-only files in the project folder, the caller's home and the host /tmp."""
    paths = [
        folder / f".e2bk-kernel-attack-{uuid.uuid4().hex[:12]}"
        for folder in (PROJECT_ROOT, Path.home(), Path("/tmp"))
    ]
    for path in paths:
        path.write_text("host only\n")
    try:
        yield paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_cell_sees_no_host_files(kernel: Kernel, host_markers: list[Path]) -> None:
    code = (
        "import json, os\n"
        f"paths = {[str(p) for p in host_markers]!r}\n"
        "try:\n    shadow = open('/etc/shadow').read()\nexcept OSError:\n    shadow = ''\n"
        "print(json.dumps({'seen': [p for p in paths if os.path.exists(p)], 'shadow': shadow}))\n"
    )
    found = cell_json(kernel, code)
    assert found["seen"] == []
    host_shadow = Path("/etc/shadow").read_text() if os.access("/etc/shadow", os.R_OK) else ""
    assert not host_shadow.strip() or host_shadow.strip() not in found["shadow"]


def test_forged_and_replayed_requests_run_nothing(kernel: Kernel) -> None:
    """Only requests signed with the connection's key reach the sandbox, and each once: one
    signed with another key, or a signed one sent again (as whoever saw it on the way could),
    runs nothing and is not answered, as on python3."""
    path = f"/home/user/ran-{uuid.uuid4().hex[:8]}"

    def request(session: Session, mark: str) -> list[bytes]:
        content = {"code": f"open({path!r}, 'a').write({mark!r})", "silent": False}
        return [bytes(f) for f in session.serialize(session.msg("execute_request", content))]

    signed = request(kernel.kc.session, "signed ")
    forged = request(Session(key=b"not this connection's key"), "forged ")
    shell = kernel.kc.shell_channel.socket
    for frames in (signed, signed, forged):
        shell.send_multipart(frames)
    # Requests are handled in order: by the time this runs, the three above were handled.
    reply, outputs = kernel.run(f"print(open({path!r}).read())")
    assert reply["status"] == "ok", (reply, outputs)
    assert [o.content.get("text") for o in outputs] == ["signed \n"]


# Last: on today's weak sandbox this cell unmounts /tmp and /root for the module's kernel.
MOUNT_CELL = """
import ctypes, json, subprocess
libc = ctypes.CDLL(None, use_errno=True)
out = {}
for cmd in ['mount -o remount,rw,bind /', 'umount -l /tmp', 'umount -l /root', 'unshare -Ur true']:
    out[cmd] = subprocess.run(['sh', '-c', cmd], capture_output=True).returncode
out['mount(2)'] = libc.mount(b'none', b'/', None, 32 | 4096, None)
out['unshare(CLONE_NEWUSER)'] = libc.unshare(0x10000000)
print(json.dumps(out))
"""


def test_cell_cannot_remount_unmount_or_unshare(kernel: Kernel) -> None:
    results = cell_json(kernel, MOUNT_CELL)
    assert {name: rc for name, rc in results.items() if rc == 0} == {}, results
