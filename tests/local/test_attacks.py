"""Attacks on the local sandbox, run from inside sandboxes through the unmodified SDK (issue 9).

Each test is one isolation claim and asserts the secure outcome; where an attack could leave a
trace on the host (a file, a cgroup move, spent disk), the host itself is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from attack_helpers import (
    PROJECT_ROOT,
    HostListener,
    MiB,
    PacketWatch,
    connect_probe,
    host_addresses,
    host_gateways,
    host_paths_of,
    host_status,
    maps_host_root,
    privileged_fields,
    pty_run,
    py,
    served,
    sh,
    state_roots,
    status_fields,
    tagged_process,
)
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException
from e2b_code_interpreter import Sandbox
from local_helpers import host_pids_with, sandbox_host_dir, sdk_options, wait_for

from e2b_kernel.local import RunningService, start_subprocess
from e2b_kernel.local.sandbox.bwrap import RUNTIME_ROOT

pytestmark = pytest.mark.timeout(300)

ENVD_PORT = "49983"
INTERPRETER_PORT = "49999"
NEW_NAME = f"e2bk-attack-{uuid.uuid4().hex[:10]}"  # a name no host folder holds before the run


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def box(local_service: RunningService) -> Iterator[Sandbox]:
    """A sandbox shared by the read-only probes of this module."""
    sandbox = Sandbox.create(timeout=900, **sdk_options(local_service))
    try:
        yield sandbox
    finally:
        sandbox.kill()


@pytest.fixture
def fresh(local_service: RunningService) -> Iterator[Callable[..., Sandbox]]:
    """Throw-away sandboxes for attacks that may break the sandbox they run in."""
    made: list[Sandbox] = []

    def make(**options: object) -> Sandbox:
        sandbox = Sandbox.create(timeout=300, **options, **sdk_options(local_service))  # type: ignore[arg-type]
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        try:
            sandbox.kill()
        except Exception:
            pass


@pytest.fixture(scope="module")
def limited_service() -> Iterator[RunningService]:
    """A service with small memory and process limits."""
    service = start_subprocess(memory_mb=128, max_pids=64)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def host_markers() -> Iterator[dict[str, Path]]:
    """Host-only files, each with unique content, in places a sandbox must never see."""
    places = {
        "caller-home": Path.home(),
        "project": PROJECT_ROOT,
        "root": Path("/root"),
        "host-tmp": Path("/tmp"),
    }
    markers = {}
    for label, folder in places.items():
        path = folder / f".e2bk-attack-{label}-{uuid.uuid4().hex[:12]}"
        path.write_text(f"host secret {uuid.uuid4().hex}\n")
        markers[label] = path
    try:
        yield markers
    finally:
        for path in markers.values():
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# capabilities and identity

STATUS = "grep -E '^(Uid|Gid|Cap|NoNewPrivs|Seccomp)' /proc/$$/status"
RUNNERS: dict[str, Callable[[Sandbox], str]] = {
    "code-context": lambda b: py(b, "print(open('/proc/self/status').read())"),
    "command": lambda b: sh(b, STATUS)[1],
    "command-root": lambda b: sh(b, STATUS, user="root")[1],
    "pty": lambda b: pty_run(b, STATUS),
    "pty-root": lambda b: pty_run(b, STATUS, user="root"),
}


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_sandbox_processes_have_no_capabilities(box: Sandbox, runner: str) -> None:
    fields = status_fields(RUNNERS[runner](box))
    assert "CapEff" in fields, fields
    assert privileged_fields(fields) == {}, fields


def test_commands_run_as_uid_1000_by_default(box: Sandbox) -> None:
    assert sh(box, "id -u; id -g")[1].split() == ["1000", "1000"]
    assert pty_run(box, "echo uid=$(id -u)").count("uid=1000") == 1


def test_root_user_is_root_inside_without_capabilities(box: Sandbox) -> None:
    code, output = sh(box, f"id -u; {STATUS}", user="root")
    assert code == 0 and output.split()[0] == "0", output
    assert privileged_fields(status_fields(output)) == {}, output


@pytest.mark.parametrize("user", ["user", "root"])
def test_id_maps_never_reach_host_root(box: Sandbox, user: str) -> None:
    uid_map = sh(box, "cat /proc/self/uid_map", user=user)[1]
    gid_map = sh(box, "cat /proc/self/gid_map", user=user)[1]
    assert uid_map.strip() and gid_map.strip()
    assert maps_host_root(uid_map) == [] and maps_host_root(gid_map) == [], (uid_map, gid_map)
    # Seen from the host, a sandbox process (even inside-root) is an unprivileged host uid.
    _, pid = tagged_process(box, user="root")
    host = host_status(pid)
    assert "0" not in host["Uid"].split() and "0" not in host["Gid"].split(), host


# --------------------------------------------------------------------------------------------
# mounts and namespaces

MOUNT_ATTACKS = [
    "mount -o remount,rw,bind /",
    "mount -t tmpfs none /home/user/mnt",
    "umount -l /root",
    "umount -l /tmp",
    "unshare -Ur true",
    "unshare -m true",
]


@pytest.mark.parametrize("user", ["user", "root"])
@pytest.mark.parametrize("attack", MOUNT_ATTACKS)
def test_mount_and_namespace_commands_fail(
    fresh: Callable[..., Sandbox], attack: str, user: str
) -> None:
    sandbox = fresh()
    sh(sandbox, "mkdir -p /home/user/mnt")
    code, output = sh(sandbox, attack, user=user)
    assert code != 0, f"{attack!r} as {user} succeeded: {output}"


SYSCALLS = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000
MS_REMOUNT, MS_BIND = 32, 4096
def call(name, *args):
    ctypes.set_errno(0)
    rc = getattr(libc, name)(*args)
    return [rc, os.strerror(ctypes.get_errno())]
out = {}
out['mount-remount-root'] = call('mount', b'none', b'/', None, MS_REMOUNT | MS_BIND, None)
out['mount-tmpfs'] = call('mount', b'none', b'/tmp', b'tmpfs', 0, None)
out['umount2-root'] = call('umount2', b'/root', 2)
out['umount2-tmp'] = call('umount2', b'/tmp', 2)
out['unshare-user'] = call('unshare', CLONE_NEWUSER)
out['unshare-mount'] = call('unshare', CLONE_NEWNS)
out['unshare-net'] = call('unshare', CLONE_NEWNET)
# Linux AIO contexts come from one host-wide pool (fs.aio-max-nr): a sandbox taking them all
# would leave none to the host's and other sandboxes' programs.
import platform
aio_context = ctypes.c_ulong(0)
io_setup = {'x86_64': 206, 'aarch64': 0}[platform.machine()]
out['io_setup'] = call('syscall', io_setup, 1, ctypes.byref(aio_context))
for ns in ('mnt', 'user', 'net', 'pid'):
    try:
        fd = os.open(f'/proc/1/ns/{ns}', os.O_RDONLY)
        out[f'setns-{ns}'] = call('setns', fd, 0)
        os.close(fd)
    except OSError as exc:
        out[f'setns-{ns}'] = [-1, exc.strerror]
print(json.dumps(out))
"""


@pytest.mark.parametrize("user", ["user", "root"])
def test_mount_unshare_and_setns_syscalls_fail(fresh: Callable[..., Sandbox], user: str) -> None:
    sandbox = fresh()
    sandbox.files.write("/tmp/e2bk_syscalls.py", SYSCALLS)
    code, output = sh(sandbox, "python3 /tmp/e2bk_syscalls.py", user=user)
    assert code == 0, output
    results = json.loads(output.strip().splitlines()[-1])
    succeeded = {name: rc for name, rc in results.items() if rc[0] != -1}
    assert succeeded == {}, results


def test_code_context_cannot_mount_or_unshare(fresh: Callable[..., Sandbox]) -> None:
    sandbox = fresh()
    results = json.loads(py(sandbox, SYSCALLS).strip().splitlines()[-1])
    assert {name: rc for name, rc in results.items() if rc[0] != -1} == {}, results


SOCKET_FAMILIES = r"""
import ctypes, errno, json, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for family in range(64):  # every family Linux knows (AF_MAX is 46), and some it does not
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET):
        try:
            socket.socket(family, kind).close()
            out[f"{family}/{kind}"] = "made"
        except OSError as exc:
            out[f"{family}/{kind}"] = errno.errorcode.get(exc.errno, str(exc.errno))
# The kernel reads the family as 32 bits: the same family with high bits set, by raw syscall.
fd = libc.syscall(41, (1 << 32) | socket.AF_VSOCK, socket.SOCK_STREAM, 0)
out["vsock-high-bits"] = "made" if fd >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("user", ["user", "root"])
def test_only_local_ip_and_netlink_sockets_can_be_made(
    fresh: Callable[..., Sandbox], user: str
) -> None:
    # vsock, for one, is not scoped to a network namespace: a sandbox could listen on the
    # host's vsock ports and connect to the hypervisor.
    sandbox = fresh()
    sandbox.files.write("/tmp/e2bk_families.py", SOCKET_FAMILIES)
    code, output = sh(sandbox, "python3 /tmp/e2bk_families.py", user=user)
    assert code == 0, output
    results = json.loads(output.strip().splitlines()[-1])
    allowed = {"1", "2", "10", "16"}  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
    other = {key: rc for key, rc in results.items() if key.split("/")[0] not in allowed}
    assert set(other.values()) == {"EAFNOSUPPORT"}, other
    assert results["1/1"] == results["2/1"] == results["16/3"] == "made", results


HOST_WRITE = """
mount -o remount,rw,bind / 2>/dev/null
mount -o remount,rw / 2>/dev/null
echo escaped > /{name} 2>/dev/null
umount -l /tmp 2>/dev/null
echo escaped > /tmp/{name} 2>/dev/null
umount -l /root 2>/dev/null
echo escaped > /root/{name} 2>/dev/null
true
"""


@pytest.mark.parametrize("user", ["user", "root"])
def test_writes_never_reach_the_host_filesystem(fresh: Callable[..., Sandbox], user: str) -> None:
    name = f"{NEW_NAME}-{user}"
    targets = [Path("/") / name, Path("/tmp") / name, Path("/root") / name]
    try:
        sh(fresh(), HOST_WRITE.format(name=name), user=user)
        appeared = [str(path) for path in targets if path.exists()]
        assert appeared == [], f"the sandbox wrote on the host: {appeared}"
    finally:
        for path in targets:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# what the sandbox sees of the host


@pytest.mark.parametrize("place", ["caller-home", "project", "root", "host-tmp"])
def test_host_folders_are_invisible(
    fresh: Callable[..., Sandbox], host_markers: dict[str, Path], place: str
) -> None:
    path = host_markers[place]
    secret = path.read_text().split()[-1]
    # What covers the host folder inside (a tmpfs, a private bind) must not be removable.
    uncover = f"umount -l {path.parent}; umount -l {path.parent}; umount -l /tmp"
    look = f"cat {path}; ls -A {path.parent}; grep -rls {secret} {path.parent}"
    output = sh(fresh(), f"{uncover}; timeout 20 sh -c '{look}' 2>/dev/null", user="root")[1]
    assert path.name not in output and secret not in output, output[:2000]


def _python_paths() -> list[Path]:
    """The Python environment the sandbox runs, bound read-only inside by design."""
    return [Path(p) for p in {sys.prefix, sys.base_prefix} for p in (p, os.path.realpath(p))]


def test_caller_home_and_project_folder_are_not_mounted(box: Sandbox) -> None:
    # Not even empty: a visible folder tells the caller's layout and may be writable. (A
    # caller whose home is /root is left to the marker test above: the sandbox has a /root
    # of its own, whose files may share names with the host's, .bash_history say.)
    for folder in {Path.home(), PROJECT_ROOT} - {Path("/root")}:
        # Only the mount points leading to the bound Python environment may show.
        allowed = {p.relative_to(folder).parts[0] for p in _python_paths() if folder in p.parents}
        listing = sh(box, f"ls -A {folder}", user="root")[1].split()
        shown = (set(listing) & set(os.listdir(folder))) - allowed
        assert not shown, f"{folder} is visible inside: {sorted(shown)[:20]}"


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/gshadow"])
def test_host_password_hashes_are_invisible(box: Sandbox, path: str) -> None:
    if not Path(path).exists():
        pytest.skip(f"{path} does not exist on this host, so there is nothing to leak")
    host = Path(path).read_text()
    inside = sh(box, f"cat {path}", user="root")[1]
    assert host.strip() not in inside
    leaked = [line for line in host.splitlines() if line.strip() and line in inside.splitlines()]
    assert leaked == [], f"{len(leaked)} host lines of {path} are readable inside"


def test_host_ssh_keys_are_invisible(box: Sandbox) -> None:
    keys = sorted(Path("/etc/ssh").glob("ssh_host_*_key")) + sorted(Path.home().glob(".ssh/*"))
    if not keys:
        pytest.skip("this host has no SSH host or user keys to leak")
    for key in keys:
        output = sh(box, f"cat {key}", user="root")[1]
        assert key.read_text(errors="replace").strip() not in output, f"{key} is readable inside"


def test_service_state_is_invisible(fresh: Callable[..., Sandbox]) -> None:
    roots = state_roots()
    assert roots, "the service's state folder was not found on the host"
    sandbox = fresh()
    for root in roots:
        uncover = f"umount -l /tmp; umount -l {root.parent}; umount -l {root}"
        code, output = sh(sandbox, f"{uncover}; ls -A {root}", user="root")
        assert code != 0 or output.strip() == "", f"{root} is visible inside: {output[:500]}"


# --------------------------------------------------------------------------------------------
# other sandboxes

# What hides the host's /tmp and /home inside must not be removable from inside.
UNCOVER = "umount -l /tmp; umount -l /home/user; umount -l /home"


@pytest.fixture
def victim(fresh: Callable[..., Sandbox]) -> tuple[Sandbox, str, str]:
    """Sandbox A with a secret file in its home; (A, the file's name, the secret)."""
    sandbox = fresh()
    name = f"secret-{uuid.uuid4().hex[:12]}.txt"
    secret = f"victim secret {uuid.uuid4().hex}"
    sandbox.files.write(f"/home/user/{name}", secret)
    return sandbox, name, secret


def test_another_sandbox_is_unreachable_by_any_path(
    fresh: Callable[..., Sandbox], victim: tuple[Sandbox, str, str]
) -> None:
    victim_box, name, secret = victim
    _, victim_pid = tagged_process(victim_box)
    host_files = host_paths_of(name, victim_box.sandbox_id)
    print("victim's file on the host:", host_files)
    attacker = fresh()
    paths = [str(p) for p in host_files] + [
        f"/proc/{victim_pid}/root/home/user/{name}",
        f"/proc/{victim_pid}/cwd/{name}",
        f"/home/user/../../..{RUNTIME_ROOT}/*/*/disk/home/{name}",
        f"{RUNTIME_ROOT}/*/*/disk/home/{name}",
        f"/proc/*/root/home/user/{name}",
    ]
    for path in paths:
        for user in ("user", "root"):
            output = sh(attacker, f"cat {path}", user=user)[1]
            assert secret not in output, f"{path} read as {user}"
        if "*" not in path:
            assert secret not in (served(attacker, path) or ""), f"files API served {path}"
    for path in paths:
        output = sh(attacker, f"{UNCOVER}; cat {path}", user="root")[1]
        assert secret not in output, f"{path} read after {UNCOVER!r}"


def test_another_sandbox_is_unreachable_through_symlinks(
    fresh: Callable[..., Sandbox], victim: tuple[Sandbox, str, str]
) -> None:
    victim_box, name, secret = victim
    _, victim_pid = tagged_process(victim_box)
    host_files = host_paths_of(name, victim_box.sandbox_id)
    assert host_files, "the victim's file was not found under the service's state folders"
    host_files.append(Path(f"/proc/{victim_pid}/root/home/user/{name}"))
    attacker = fresh()
    for index, target in enumerate(host_files + [f.parent for f in host_files]):
        link = f"/home/user/link{index}"
        sh(attacker, f"ln -sfn {target} {link}")
        file_link = link if target.name == name else f"{link}/{name}"
        assert secret not in sh(attacker, f"cat {file_link}", user="root")[1], target
        # The link lives in /home/user, so only the mount over /tmp is removed here.
        uncovered = sh(attacker, f"umount -l /tmp; cat {file_link}", user="root")[1]
        assert secret not in uncovered, f"{target} read after unmounting /tmp"
        assert secret not in (served(attacker, file_link) or ""), f"files API followed {target}"
        listed = [e.name for e in _list_or_empty(attacker, link)]
        assert name not in listed, f"files API listed {target}"


def _list_or_empty(box: Sandbox, path: str, depth: int = 1) -> list:
    try:
        return list(box.files.list(path, depth=depth, request_timeout=60))
    except Exception:
        return []


def test_other_sandboxes_homes_are_not_listed(
    fresh: Callable[..., Sandbox], victim: tuple[Sandbox, str, str]
) -> None:
    victim_box, name, _ = victim
    _, victim_pid = tagged_process(victim_box)
    attacker = fresh()
    assert sh(attacker, "ls -A /home", user="root")[1].split() == ["user"]
    roots = ["/", "/tmp", "/home", "/run", f"/proc/{victim_pid}/root/home/user"]
    for root in roots + [str(r) for r in state_roots()]:
        entries = _list_or_empty(attacker, root, depth=4)
        assert name not in {e.name for e in entries}, root
    homes = [f"{root}/{pattern}" for root in state_roots() for pattern in ("*/*", "*", "*/*/*")]
    listing = sh(attacker, f"{UNCOVER}; ls -A {' '.join(homes)} 2>/dev/null", user="root")[1]
    assert name not in listing, f"listed after {UNCOVER!r}"


# --------------------------------------------------------------------------------------------
# the files API sees what the sandbox sees


@pytest.mark.parametrize("place", ["caller-home", "project", "root", "host-tmp"])
def test_files_api_does_not_serve_host_files(
    box: Sandbox, host_markers: dict[str, Path], place: str
) -> None:
    path = host_markers[place]
    spellings = [
        str(path),
        f"/{path}",
        f"/home/user/../..{path}",
        f"/proc/self/root{path}",
        f"/proc/1/root{path}",
        f"/proc/thread-self/root{path}",
    ]
    for spelling in spellings:
        assert served(box, spelling) != path.read_text(), f"files API served {spelling}"
        folder = spelling.rsplit("/", 1)[0]
        listed = [e.name for e in _list_or_empty(box, folder)]
        assert path.name not in listed, f"files API listed {folder}"


def test_files_api_reads_no_host_dotfiles(box: Sandbox) -> None:
    host_files = [p for p in Path.home().glob(".*") if p.is_file()][:20]
    host_files += [p for p in Path("/root").glob(".*") if p.is_file()][:20]
    if not host_files:
        pytest.skip("the caller's home and /root hold no dot files to try")
    leaked = [str(p) for p in host_files if served(box, str(p)) == p.read_text(errors="replace")]
    assert leaked == [], f"served host files: {leaked}"


def test_files_api_lists_no_host_entries_under_root(
    box: Sandbox, host_markers: dict[str, Path]
) -> None:
    entries = _list_or_empty(box, "/root", depth=3)
    assert host_markers["root"].name not in {e.name for e in entries}
    assert len(entries) < 200, f"{len(entries)} entries under /root, e.g. {entries[:5]}"


@pytest.mark.parametrize("via", ["", "/proc/1/root", "/proc/self/root"])
@pytest.mark.parametrize("place", ["host-tmp", "root", "shadow"])
def test_files_api_never_follows_a_symlink_to_the_host(
    box: Sandbox, host_markers: dict[str, Path], place: str, via: str
) -> None:
    real = Path("/etc/shadow") if place == "shadow" else host_markers[place]
    host = real.read_text()
    target = f"{via}{real}"
    link = f"/home/user/to-{place}-{uuid.uuid4().hex[:6]}"
    sh(box, f"ln -s {target} {link}")
    content = served(box, link)
    assert content is None or host.strip() not in content, f"{link} -> {target} served host bytes"
    url = box.download_url(link)
    response = httpx.get(url, headers=_envd_headers(box), timeout=30)
    assert host.strip() not in response.text, f"download_url of {link} served host bytes"


# --------------------------------------------------------------------------------------------
# cgroups and limits

CGROUP_ESCAPE = r"""
for m in / /sys /sys/fs/cgroup /sys/fs/cgroup/*; do
  mount -o remount,rw,bind "$m" 2>/dev/null; mount -o remount,rw "$m" 2>/dev/null
done
for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/*/cgroup.procs; do
  [ -e "$f" ] && (echo $$ > "$f") 2>/dev/null && echo "WROTE $f"
done
"""


def test_cgroup_tree_is_not_writable(fresh: Callable[..., Sandbox]) -> None:
    sandbox = fresh()
    probe = f"mkdir /sys/fs/cgroup/{NEW_NAME} /sys/fs/cgroup/pids/{NEW_NAME} 2>&1; echo done"
    for user in ("user", "root"):
        sh(sandbox, CGROUP_ESCAPE + probe, user=user)
    created = [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/{NEW_NAME}") if p.exists()]
    for path in created:
        os.rmdir(path)
    assert created == [], f"the sandbox created host cgroups: {created}"


@pytest.mark.parametrize("user", ["user", "root"])
def test_own_pid_cannot_move_to_another_cgroup(fresh: Callable[..., Sandbox], user: str) -> None:
    sandbox = fresh()
    _, pid = tagged_process(sandbox, user=user)
    before = Path(f"/proc/{pid}/cgroup").read_text()
    _, output = sh(sandbox, CGROUP_ESCAPE, user=user)
    assert "WROTE" not in output, output
    # The host's view: the sandbox's processes are still in their own, non-root cgroups.
    _, later = tagged_process(sandbox, user=user)
    after = Path(f"/proc/{later}/cgroup").read_text()
    in_root = [line for line in after.splitlines() if line.endswith(":/")]
    assert in_root == [] or before == after, after


FORK = r"""
import os, signal, time
children = []
try:
    while len(children) < 200:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError:
    pass
print("started", len(children))
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("user", ["user", "root"])
def test_fork_bomb_is_bounded_after_an_escape_attempt(
    limited_service: RunningService, user: str
) -> None:
    sandbox = Sandbox.create(timeout=120, **sdk_options(limited_service))
    try:
        sandbox.files.write("/tmp/e2bk_fork.py", FORK)
        _, output = sh(sandbox, CGROUP_ESCAPE + "python3 /tmp/e2bk_fork.py", user=user)
        started = int(output.split("started")[-1].split()[0])
        assert 0 < started < 64, output
    finally:
        sandbox.kill()


@pytest.mark.parametrize("user", ["user", "root"])
def test_memory_limit_bites_after_an_escape_attempt(
    limited_service: RunningService, user: str
) -> None:
    sandbox = Sandbox.create(timeout=120, **sdk_options(limited_service))
    try:
        grab = "python3 -c \"b = b'x' * (400 * 1024 * 1024); print('allocated', len(b))\""
        code, output = sh(sandbox, CGROUP_ESCAPE + grab, user=user)
        assert code != 0 and "allocated" not in output, output
    finally:
        sandbox.kill()


# --------------------------------------------------------------------------------------------
# disk cap

DISK_CAP_MB = 64
FILL = r"""
import errno, os, sys
folder, limit = sys.argv[1], int(sys.argv[2])
written, error = 0, 'none'
chunk = os.urandom(1024 * 1024)
try:
    with open(os.path.join(folder, 'fill.bin'), 'wb') as f:
        while written < limit:
            f.write(chunk)
            f.flush()
            written += 1
        os.fsync(f.fileno())
except OSError as exc:
    error = errno.errorcode.get(exc.errno, str(exc.errno))
print('written', written, error)
"""


def test_disk_cap_holds(fresh: Callable[..., Sandbox]) -> None:
    # The cap is asked for per sandbox with metadata (issue 9: `--disk` and `e2b.disk_mb`).
    sandbox = fresh(metadata={"e2b.disk_mb": str(DISK_CAP_MB)})
    sandbox.files.write("/tmp/e2bk_fill.py", FILL)
    free_before = min(shutil.disk_usage(p).free for p in ["/", "/tmp"])
    results = {}
    # /run/e2b/sockets: the kernels' sockets and the Jupyter Server's runtime files, the one
    # other folder a sandbox may write.
    for folder in ("/home/user", "/tmp", "/run/e2b/sockets"):
        _, output = sh(sandbox, f"python3 /tmp/e2bk_fill.py {folder} {3 * DISK_CAP_MB}")
        words = output.split("written")[-1].split()
        results[folder] = (int(words[0]), words[1])
    free_after = min(shutil.disk_usage(p).free for p in ["/", "/tmp"])
    print("written MiB, error:", results, "host free fell by", (free_before - free_after) // MiB)
    assert {error for _, error in results.values()} == {"ENOSPC"}, results
    assert sum(written for written, _ in results.values()) <= DISK_CAP_MB, results
    assert free_before - free_after <= 1.5 * DISK_CAP_MB * MiB


XATTR_FILL = r"""
import errno, os, sys
limit, stored, error = int(sys.argv[1]), 0, 'none'
try:
    for n in range(1 << 30):
        path = '/home/user/x%06d' % (n // 64)
        if n % 64 == 0:
            open(path, 'w').close()
        os.setxattr(path, 'user.e2b.k%02d' % (n % 64), os.urandom(4000))
        stored += 4000
        if stored >= limit:
            break
except OSError as exc:
    error = errno.errorcode.get(exc.errno, str(exc.errno))
print('stored', stored, error)
"""


def test_file_metadata_counts_against_the_disk_cap(fresh: Callable[..., Sandbox]) -> None:
    """tmpfs keeps extended attributes in no block: without a bound on its inode space, sandbox
    code stored 196 MiB of them on a 16 MiB disk (``df`` showed 5 MB)."""
    sandbox = fresh(metadata={"e2b.disk_mb": str(DISK_CAP_MB)})
    sandbox.files.write("/tmp/e2bk_xattrs.py", XATTR_FILL)
    _, output = sh(sandbox, f"python3 /tmp/e2bk_xattrs.py {2 * DISK_CAP_MB * MiB}", timeout=120)
    stored, error = output.split("stored")[-1].split()
    assert error == "ENOSPC", output
    assert int(stored) <= DISK_CAP_MB * MiB // 4, output  # a quarter of the cap at most


def test_a_sparse_file_cannot_make_a_snapshot_fill_the_host_disk(
    fresh: Callable[..., Sandbox],
) -> None:
    """A sparse file costs nothing on the capped disk, but tar stores it in full: planted by
    sandbox code, it must not fill the host's disk when the owner snapshots or forks."""
    sandbox = fresh(metadata={"e2b.disk_mb": str(DISK_CAP_MB)})
    sh(sandbox, "truncate -s 1G /home/user/sparse && echo kept > /home/user/small.txt")
    free_before = min(shutil.disk_usage(p).free for p in ["/", "/tmp"])
    with pytest.raises(SandboxException, match=r"larger than .* MiB"):
        sandbox.create_snapshot()
    with pytest.raises(SandboxException, match=r"larger than .* MiB"):
        sandbox.fork()
    free_after = min(shutil.disk_usage(p).free for p in ["/", "/tmp"])
    assert free_before - free_after < 3 * DISK_CAP_MB * MiB
    sh(sandbox, "rm /home/user/sparse")
    copy = fresh(template=sandbox.create_snapshot().snapshot_id)  # and then it works
    assert copy.files.read("/home/user/small.txt") == "kept\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another host user needs root")
def test_another_host_user_cannot_read_a_sandboxs_files(box: Sandbox) -> None:
    """The host path of a sandbox's files shows in every /proc/<pid>/mountinfo, which any
    host user can read: knowing it must not let them in."""
    box.files.write("/home/user/secret.txt", "sk-live-secret")
    home = sandbox_host_dir(box.sandbox_id)
    assert home is not None  # the layout this attack aims at
    homes = [home / "disk/home/secret.txt"]
    assert homes[0].exists()
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    for command in (["cat", str(homes[0])], ["ls", str(homes[0].parent)]):
        attempt = subprocess.run(as_nobody + command, capture_output=True, text=True)
        assert attempt.returncode != 0 and "sk-live" not in attempt.stdout, attempt


def test_df_shows_the_disk_cap(fresh: Callable[..., Sandbox]) -> None:
    sandbox = fresh(metadata={"e2b.disk_mb": str(DISK_CAP_MB)})
    for folder in ("/home/user", "/tmp"):
        output = sh(sandbox, f"df -m --output=size {folder}")[1].split()
        size = int(output[-1])
        assert 0.9 * DISK_CAP_MB <= size <= 1.1 * DISK_CAP_MB, (folder, output)


def test_default_disk_cap_is_below_the_host_disk(box: Sandbox) -> None:
    size_mb = int(sh(box, "df -m --output=size /home/user")[1].split()[-1])
    host_mb = shutil.disk_usage("/").total // MiB
    assert size_mb < host_mb, f"/home/user shows the host's disk ({size_mb} MiB): no cap"


# --------------------------------------------------------------------------------------------
# network


@pytest.mark.parametrize("opened", ["at create", "by update_network"])
def test_internet_sandbox_cannot_reach_the_service_or_host_ports(
    local_service: RunningService, fresh: Callable[..., Sandbox], opened: str
) -> None:
    service_port = urlparse(local_service.url).port
    assert service_port
    host_v4 = [a for a in host_addresses() if ":" not in a]
    listener = HostListener()
    try:
        if opened == "at create":
            sandbox = fresh(allow_internet_access=True)
        else:  # its network starts while code runs inside: the fence must come before it
            sandbox = fresh(allow_internet_access=False)
            outside = next(a for a in host_v4 if not a.startswith("127."))
            watch = PacketWatch(sandbox, outside, listener.port)
            sandbox.update_network({})
            assert watch.sent() == 0, "packets reached a host address as the network started"
        assert "default via" in sh(sandbox, "ip route")[1]  # a network to attack through
        addresses = ["127.0.0.1", *host_v4]
        targets = [(a, p) for a in dict.fromkeys(addresses) for p in (service_port, listener.port)]
        results = connect_probe(sandbox, targets, never=host_gateways())
    finally:
        listener.close()
    print("probe results:", results)
    assert [t for t, outcome in results.items() if outcome == "connected"] == []
    assert listener.accepted == 0


def _address_monitors(service_pid: int) -> list[int]:
    """The service's ``ip monitor`` processes (it watches the host's addresses)."""
    found = []
    for pid in host_pids_with("monitor address"):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(
                service_pid
            ):
                found.append(pid)
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the host a new address needs root")
@pytest.mark.parametrize("monitor", ["running", "killed once"])
def test_an_address_the_host_gains_later_is_fenced_off_too(
    local_service: RunningService, fresh: Callable[..., Sandbox], monitor: str
) -> None:
    """DHCP, a VPN or a floating IP can give the host an address after a sandbox's network
    started; slirp4netns would connect to it as to any host-local address. The service's
    address monitor, if it ends, is started again."""
    sandbox = fresh(allow_internet_access=True)
    assert "default via" in sh(sandbox, "ip route")[1]
    if monitor == "killed once":
        [first] = _address_monitors(local_service.pid)
        os.kill(first, 9)
        wait_for(
            lambda: _address_monitors(local_service.pid) not in ([], [first]), what="a new monitor"
        )
    new = "198.51.100.77"  # TEST-NET-2: nobody's address, routed nowhere
    listener = HostListener()
    subprocess.run(["ip", "addr", "add", f"{new}/32", "dev", "lo"], check=True)
    try:
        wait_for(
            lambda: f"prohibit {new}" in sh(sandbox, "ip route")[1],
            timeout=15,
            what=f"the sandbox's fence to take in the host's new address {new}",
        )
        results = connect_probe(sandbox, [(new, listener.port)], never=host_gateways())
    finally:
        subprocess.run(["ip", "addr", "del", f"{new}/32", "dev", "lo"], check=False)
        listener.close()
    assert results[f"{new}:{listener.port}"] != "connected"
    assert listener.accepted == 0


def _networks_of(sandbox: Sandbox) -> list[int]:
    """Host pids of the slirp4netns processes charged to the sandbox (in its cgroups)."""
    host_dir = sandbox_host_dir(sandbox.sandbox_id)
    assert host_dir is not None
    found = []
    for entry in Path("/proc").iterdir():
        try:
            exe = os.readlink(entry / "exe") if entry.name.isdigit() else ""
            groups = (entry / "cgroup").read_text() if exe.endswith("/slirp4netns") else ""
        except OSError:
            continue
        if f"/e2b-kernel/{host_dir.name}" in groups:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroups to charge")
def test_the_network_helper_is_charged_to_its_sandbox(
    local_service: RunningService, fresh: Callable[..., Sandbox]
) -> None:
    """Each connection a sandbox opens is a host socket and buffers in its slirp4netns (12,000
    of them took it from 3 to 80 MiB and 4,600 fds): the sandbox pays, within its limits."""
    sandbox = fresh(allow_internet_access=True)
    [helper] = _networks_of(sandbox)
    assert _open_files_limit(helper) == (16384, 16384)
    # A pause that ends its processes (a reboot on resume) keeps the network, as a VM's.
    assert sandbox.pause()
    options = sdk_options(local_service)
    again = Sandbox.connect(sandbox.sandbox_id, on_resume="reboot", **options)  # type: ignore[arg-type]
    assert again.is_running()
    assert _networks_of(again) == [helper]
    assert "default via" in sh(again, "ip route")[1]


def _open_files_limit(pid: int) -> tuple[int, int]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    [files] = [line.split() for line in limits.splitlines() if line.startswith("Max open files")]
    return int(files[3]), int(files[4])


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering another process's limits needs root")
def test_network_helpers_hold_no_key_and_start_under_a_lower_files_limit() -> None:
    """Without CAP_SYS_RESOURCE no process may raise its hard limit: the helper's bound must
    not exceed the service's, or no sandbox could have a network. And slirp4netns, the way
    out of an internet-enabled sandbox were its packet parsing broken, held the service's
    API key in its environment (as did the address monitor)."""
    key = "e2b_key-that-only-the-service-may-hold"
    service = start_subprocess(pool_size=0, api_key=key)
    try:
        resource.prlimit(service.pid, resource.RLIMIT_NOFILE, (1024, 8192))
        sandbox = Sandbox.create(timeout=120, allow_internet_access=True, **sdk_options(service))
        [helper] = _networks_of(sandbox)
        assert _open_files_limit(helper) == (8192, 8192)
        helpers = [helper, *_address_monitors(service.pid)]
        assert len(helpers) == 2
        for pid in helpers:
            assert key.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), pid
        sandbox.kill()
    finally:
        service.stop()


def test_internet_sandbox_cannot_call_the_service_api(
    local_service: RunningService, fresh: Callable[..., Sandbox]
) -> None:
    sandbox = fresh(allow_internet_access=True)
    port = urlparse(local_service.url).port
    code = (
        "import urllib.error, urllib.request\n"
        "for host in ['127.0.0.1', 'localhost']:\n"
        "    try:\n"
        f"        r = urllib.request.urlopen(f'http://{{host}}:{port}/sandboxes', timeout=3)\n"
        "        print('REACHED', host, r.status)\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        print('REACHED', host, exc.code)\n"
        "    except Exception as exc:\n"
        "        print('refused', host, type(exc).__name__)\n"
    )
    assert "REACHED" not in py(sandbox, code)


# --------------------------------------------------------------------------------------------
# authentication


def test_wrong_api_key_is_refused(local_service: RunningService) -> None:
    options = sdk_options(local_service) | {"api_key": f"e2b_{uuid.uuid4().hex}"}
    with pytest.raises(AuthenticationException):
        Sandbox.create(timeout=30, **options)
    for key in (options["api_key"], local_service.api_key[:-1] + "x"):
        response = httpx.get(f"{local_service.url}/sandboxes", headers={"X-API-Key": key})
        assert response.status_code == 401, (key, response.status_code)


def _envd_headers(box: Sandbox, port: str = ENVD_PORT) -> dict[str, str]:
    return {"E2b-Sandbox-Id": box.sandbox_id, "E2b-Sandbox-Port": port}


def test_sandboxes_get_an_envd_access_token(box: Sandbox) -> None:
    token = box._envd_access_token
    assert isinstance(token, str) and len(token) >= 16, f"no envd access token: {token!r}"


@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_envd_and_execute_refuse_requests_without_the_token(
    local_service: RunningService, box: Sandbox, token: str
) -> None:
    box.files.write("/home/user/token-probe.txt", "private")
    url = local_service.url
    extra = {} if token == "missing" else {"X-Access-Token": uuid.uuid4().hex}
    envd = _envd_headers(box) | extra
    calls = {
        "files": httpx.get(
            f"{url}/files", params={"path": "/home/user/token-probe.txt"}, headers=envd
        ),
        "process-list": httpx.post(
            f"{url}/process.Process/List",
            headers=envd | {"Content-Type": "application/json"},
            content=b"{}",
        ),
        "execute": httpx.post(
            f"{url}/execute",
            headers=_envd_headers(box, INTERPRETER_PORT) | extra,
            json={"code": "print('ran')"},
        ),
    }
    statuses = {name: response.status_code for name, response in calls.items()}
    assert statuses == {name: 401 for name in calls}, statuses


def test_signed_download_url_expires(box: Sandbox) -> None:
    box.files.write("/home/user/signed.txt", "signed content")
    url = box.download_url("/home/user/signed.txt", use_signature_expiration=2)
    first = httpx.get(url, headers=_envd_headers(box), timeout=10)
    assert first.status_code == 200 and first.text == "signed content"
    expires = time.time() + 2
    refused: list[int] = []

    def refused_now() -> bool:
        status = httpx.get(url, headers=_envd_headers(box), timeout=10).status_code
        if status in (401, 403):
            refused.append(status)
        return bool(refused)

    wait_for(refused_now, timeout=15, what="the signed URL to expire")
    assert time.time() >= expires - 1, "refused before its expiry"
    unsigned = httpx.get(
        f"{box.envd_api_url}/files",
        params={"path": "/home/user/signed.txt"},
        headers=_envd_headers(box),
        timeout=10,
    )
    assert unsigned.status_code == 401


def test_signed_upload_url_expires(box: Sandbox) -> None:
    url = box.upload_url("/home/user/uploaded.txt", use_signature_expiration=2)

    def upload() -> int:
        files = {"file": ("uploaded.txt", b"late")}
        return httpx.post(url, headers=_envd_headers(box), files=files, timeout=10).status_code

    assert upload() == 200
    wait_for(lambda: upload() in (401, 403), timeout=15, what="the signed upload URL to expire")


def test_a_signed_upload_url_writes_only_its_own_path_as_its_own_user(box: Sandbox) -> None:
    """Whoever holds an upload URL for one file must not plant others (a login shell's
    .profile runs on the owner's next command) nor write as root."""
    box.commands.run("rm -f /home/user/allowed.txt /home/user/.bashrc; cp .profile profile.bak")
    url = box.upload_url("/home/user/allowed.txt")
    parts = [
        ("file", ("allowed.txt", b"ok\n")),
        ("file", ("/home/user/.bashrc", b"echo PLANTED\n")),
        ("file", ("/home/user/.profile", b"echo PLANTED\n")),
    ]
    response = httpx.post(url, files=parts, timeout=30)
    assert response.status_code == 400, response.text  # envd: one file per path per request
    assert "multiple files to the same path '/home/user/allowed.txt'" in response.text
    assert box.files.read("/home/user/allowed.txt") == "ok\n"
    assert not box.files.exists("/home/user/.bashrc")
    assert box.commands.run("cmp .profile profile.bak && echo same").stdout == "same\n"

    root_header = {"Authorization": "Basic cm9vdDo="}  # "root:", not covered by the signature
    url = box.upload_url("/home/user/as-whom.txt")
    response = httpx.post(url, files={"file": ("x", b"x")}, headers=root_header, timeout=30)
    assert response.status_code == 200, response.text
    owner = box.commands.run("stat -c %U /home/user/as-whom.txt").stdout.strip()
    assert owner == "user"
    url = box.upload_url("/root/planted.txt")
    response = httpx.post(url, files={"file": ("x", b"x")}, headers=root_header, timeout=30)
    assert response.status_code >= 400
    assert not box.files.exists("/root/planted.txt", user="root")


# --------------------------------------------------------------------------------------------
# one sandbox cannot stall another


def test_heavy_walk_does_not_delay_another_sandbox(
    local_service: RunningService, fresh: Callable[..., Sandbox]
) -> None:
    walker, other = fresh(), fresh()
    headers = _envd_headers(other)
    if other._envd_access_token:
        headers["X-Access-Token"] = other._envd_access_token
    walked: list[int] = []

    def walk() -> None:
        until = time.monotonic() + 6
        for _ in range(3):
            walked.append(len(_list_or_empty(walker, "/usr", depth=30)))
            if time.monotonic() > until:
                return

    latencies: list[float] = []
    with httpx.Client(base_url=local_service.url, headers=headers, timeout=30) as client:
        assert client.get("/health").status_code in (200, 204)
        thread = threading.Thread(target=walk, daemon=True)
        thread.start()
        deadline = time.monotonic() + 90
        while thread.is_alive() and time.monotonic() < deadline and len(latencies) < 5000:
            started = time.monotonic()
            assert client.get("/health").status_code in (200, 204)
            latencies.append(time.monotonic() - started)
        thread.join(timeout=60)
    print(f"entries walked {walked}; {len(latencies)} health checks, max {max(latencies):.3f} s")
    assert len(latencies) >= 20, "too few health checks ran during the walk to judge"
    # A walk on the service's own event loop stalls every request for a whole listing
    # (seconds each). What remains are garbage-collection pauses while the reply is assembled
    # (up to about 0.25 s on a 2-core VM for a 138,000-entry listing; see docs), which CI's
    # other test worker can stretch (0.66 s seen): the bound tells the two apart with room,
    # and one probe alone may meet a moment with no core for the service at all.
    assert sorted(latencies)[-2] < 1.5 and max(latencies) < 5, sorted(latencies)[-5:]


# --------------------------------------------------------------------------------------------
# a dead sandbox is reported gone


def _kill_all(box: Sandbox, user: str) -> None:
    try:
        box.commands.run("kill -9 -1", user=user, timeout=10)  # type: ignore[arg-type]
    except Exception:
        pass  # the command kills itself, so its stream ends in some error


def _reported_gone(service: RunningService, box: Sandbox) -> bool:
    try:
        Sandbox.connect(box.sandbox_id, **sdk_options(service))
    except NotFoundException:
        return not box.is_running(request_timeout=5)
    return False


def _works(box: Sandbox) -> bool:
    try:
        return box.commands.run("echo alive", timeout=10).stdout == "alive\n"
    except Exception:
        return False


def test_kill_all_as_root_leaves_the_sandbox_reported_gone(
    local_service: RunningService, fresh: Callable[..., Sandbox]
) -> None:
    sandbox = fresh()
    _kill_all(sandbox, "root")
    wait_for(lambda: _reported_gone(local_service, sandbox), timeout=30, what="reported gone")
    assert sandbox.sandbox_id not in {s.sandbox_id for s in _listed(local_service)}


def test_kill_all_as_user_leaves_a_working_or_gone_sandbox(
    local_service: RunningService, fresh: Callable[..., Sandbox]
) -> None:
    # uid 1000 cannot kill the agent: the sandbox lives on and must work; if it died, it is gone.
    sandbox = fresh()
    _kill_all(sandbox, "user")
    wait_for(
        lambda: _works(sandbox) or _reported_gone(local_service, sandbox),
        timeout=30,
        what="the sandbox to work or be reported gone",
    )


def _listed(service: RunningService) -> list:
    paginator = Sandbox.list(api_key=service.api_key, api_url=service.url)
    items = []
    for _ in range(20):
        if not paginator.has_next:
            break
        items.extend(paginator.next_items())
    return items
