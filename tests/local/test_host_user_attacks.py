"""Attacks by another user of the host, who has no API key: squatting the shared folders in
the temp folder before a service (often root) makes them, and learning sandbox ids (which
open a sandbox's public ports, as on E2B) from what every host user can read."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import Sandbox

from e2b_kernel.local.host_dirs import UnsafeHostDir, owned_dir

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as another host user (setpriv) needs root"
)

AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp folder every user can create names in, as /tmp (pytest's own is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="e2bk-shared-tmp-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _plant_stale_service(root: Path, victim: Path) -> None:
    """As nobody: a dead service's state dir under root, with a file naming ``victim`` (an
    older sweep removed the folder such a ``socket_dir`` file named)."""
    sandbox_dir = root / "svc-999999-x" / "sb"
    script = (
        f"mkdir -p {sandbox_dir} && echo {victim} > {sandbox_dir}/socket_dir && chmod -R 777 {root}"
    )
    subprocess.run([*AS_NOBODY, "sh", "-c", script], check=True)


def test_a_service_refuses_state_folders_another_user_made(shared_tmp: Path) -> None:
    """The squatter's folder would have made the root service remove any host path (and
    mount and unmount in a folder the squatter controls): the service must not start."""
    victim = Path(tempfile.mkdtemp(prefix="e2bk-precious-"))
    (victim / "data").write_text("precious\n")
    _plant_stale_service(shared_tmp / "e2b-kernel-local", victim)  # where it used to live
    _plant_stale_service(shared_tmp / f"e2b-kernel-{os.geteuid()}" / "local", victim)
    service = subprocess.Popen(
        [sys.executable, "-m", "e2b_kernel.local", "--port", "0", "--pool-size", "0"],
        env={**os.environ, "TMPDIR": str(shared_tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = service.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        service.terminate()
        service.communicate(timeout=30)
        pytest.fail("the service started in state folders another user made")
    finally:
        assert (victim / "data").read_text() == "precious\n"
        shutil.rmtree(victim)
    assert service.returncode == 2, stderr
    assert f"{shared_tmp}/e2b-kernel-{os.geteuid()} belongs to uid 65534" in stderr
    assert "Remove" in stderr and "TMPDIR" in stderr
    assert "Traceback" not in stderr
    assert "# error: " in stdout  # what a kernel's private service reports to its kernel


def test_owned_dir_takes_only_a_private_directory_of_this_user(tmp_path: Path) -> None:
    umask = os.umask(0o077)  # would trim 0711 to 0700: no sandbox could reach its disk
    try:
        made = owned_dir(tmp_path / "made", 0o711)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(made.stat().st_mode) == 0o711
    made.chmod(0o700)
    assert owned_dir(made, 0o711) == made  # made before by this user: fine, and passable
    assert stat.S_IMODE(made.stat().st_mode) == 0o711
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", 65534, 65534)
    (tmp_path / "file").write_text("")
    for name, words in [
        ("link", "not a directory"),
        ("file", "not a directory"),
        ("open", "can be written by other users"),
        ("theirs", "belongs to uid 65534"),
    ]:
        with pytest.raises(UnsafeHostDir, match=words):
            owned_dir(tmp_path / name, 0o711)


FIND_TEXT = r"""
import os, sys
wanted = sys.stdin.read().strip()  # not in argv: this process's own cmdline is read too
places = ["/proc/self/mountinfo", "/proc/net/unix", "/proc/net/unix6"]
for pid in os.listdir("/proc"):
    if pid.isdigit():
        places += [f"/proc/{pid}/cmdline", f"/proc/{pid}/cgroup", f"/proc/{pid}/mountinfo"]
found = []
for place in places:
    try:
        with open(place, "rb") as readable:
            if wanted.encode() in readable.read():
                found.append(place)
    except OSError:
        pass
seen = 0
for top in ["/sys/fs/cgroup", "/tmp", "/run", "/dev/shm", "/var/tmp"]:
    for folder, dirs, files in os.walk(top):
        seen += len(dirs) + len(files)
        found += [os.path.join(folder, n) for n in dirs + files if wanted in n]
        if seen > 200000:
            break
print("\n".join(found))
"""


def test_another_host_user_cannot_learn_a_sandbox_id(sbx: Sandbox) -> None:
    """A sandbox's id opens its ports to anyone when its public traffic is allowed (E2B's
    default), as on E2B; E2B does not publish ids, and neither may the host: not in mount
    tables, cgroup names, process command lines or socket paths that every user can read."""
    sbx.commands.run("sleep 60", background=True)
    search = subprocess.run(
        [*AS_NOBODY, "/usr/bin/python3", "-c", FIND_TEXT],
        input=sbx.sandbox_id,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert search.returncode == 0, search.stderr
    assert search.stdout.strip() == "", f"the sandbox id shows in: {search.stdout}"
