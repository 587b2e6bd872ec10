"""The seccomp filter itself, loaded in a host process that could otherwise do what it
refuses (root here): inside a sandbox a refusal could also come from missing capabilities."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can make namespaces without the filter to compare"
)

CLONE_FLAGS = {
    "NEWNS": 0x00020000,
    "NEWCGROUP": 0x02000000,
    "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000,
    "NEWUSER": 0x10000000,
    "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}

TRY_CLONES = r"""
import ctypes, errno, json, os, sys
from e2b_kernel.local.sandbox import seccomp
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

if sys.argv[1] == "filtered":
    bpf = ctypes.create_string_buffer(seccomp.build_filter())
    program = Program(len(bpf.raw) // 8, ctypes.addressof(bpf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
results = {}
for name, flag in json.loads(sys.argv[2]).items():
    pid = libc.syscall(56, flag | 17, 0, 0, 0, 0)  # clone(flags | SIGCHLD): a fork
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        results[name] = "made"
    else:
        results[name] = errno.errorcode[ctypes.get_errno()]
print(json.dumps(results))
"""


def _clones(mode: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", TRY_CLONES, mode, json.dumps(CLONE_FLAGS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_filter_refuses_every_new_namespace_through_clone() -> None:
    assert _clones("bare") == dict.fromkeys(CLONE_FLAGS, "made")  # root could, without it
    assert _clones("filtered") == dict.fromkeys(CLONE_FLAGS, "EPERM")
