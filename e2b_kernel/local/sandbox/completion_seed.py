"""A warm Jedi cache in every new sandbox's home, so that its first Tab completion is quick.

IPython completes through Jedi, which parses the typeshed stubs of ``builtins`` and friends the
first time and keeps the trees in ``~/.cache/jedi``. A fresh sandbox's home has no such cache,
so its first completion took 6-7 s on a 2-core VM, where a ``python3`` user's warm cache
answers in well under one. The service builds the cache once per runtime (this Python and its
Jedi, parso and IPython), on the host, in a process at a low CPU priority, and each
sandbox made after that gets its own copy (about 5 MB) in its home.

The seed is written by the service's own process from the read-only runtime only: no sandbox
ever writes it, and each gets a copy rather than a link, so nothing a sandbox does to its
cache reaches the seed or another sandbox (these files are pickles, which Jedi loads).
The sandboxes bind that runtime at the same paths, so the cached trees match inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

__all__ = ["build", "copy_into", "keep_built", "main", "seed_dir", "start_build"]

log = logging.getLogger(__name__)

_HOME_CACHE = Path(".cache") / "jedi"  # where Jedi looks, relative to $HOME
# What the builder completes: a plain name (the builtins and typing stubs) and attributes of
# a builtin object, the first things a notebook user completes.
_PROBES = ("ke", "kept.", "import o")
_VERSIONED = ("jedi-", "parso-", "ipython-")  # a new version of one of these needs a new seed


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "e2b-kernel" / "completion-seed"


def _dist_infos() -> list[Path]:
    """The dist-info folders of Jedi, parso and IPython ("jedi-0.19.2.dist-info"), found by a
    directory listing, where importlib.metadata would take 35 ms of the service's start."""
    found: list[Path] = []
    for folder in sorted({p for p in sys.path if os.path.basename(p) == "site-packages"}):
        with contextlib.suppress(OSError):
            found += sorted(
                Path(folder, name)
                for name in os.listdir(folder)
                if name.lower().startswith(_VERSIONED) and name.endswith(".dist-info")
            )
    return found


@cache
def seed_dir() -> Path:
    """This runtime's seed: a folder holding a ``.cache/jedi`` tree once built. Keyed by the
    interpreter and where Jedi, parso and IPython are installed, not only their versions:
    parso finds a cached tree by its source's path, and two venvs of one Python share the
    interpreter and versions (their seeds replaced each other's; each then missed every tree)."""
    parts = [os.path.realpath(sys.executable), sys.version, *(str(p) for p in _dist_infos())]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return _cache_root() / key


def _installed_at() -> float:
    """When the sources the seed caches were last written: parso trusts a cached tree only if
    the cache file is not older than its source, and pip writes a package's files at install
    time. A reinstall of the same versions (a new venv where the old one was, ``pip install
    --force-reinstall``) keeps :func:`seed_dir`'s key but makes every older tree stale."""
    stamps = [os.stat(os.__file__).st_mtime]  # the standard library, for non-stub modules
    for folder in _dist_infos():
        with contextlib.suppress(OSError):
            stamps.append(folder.stat().st_mtime)
    return max(stamps)


def _is_current(seed: Path) -> bool:
    """Whether ``seed`` holds a cache that Jedi will use, not one made before the runtime's
    sources were (re)installed, which every sandbox would parse again."""
    try:
        trees = [p.stat().st_mtime for p in (seed / _HOME_CACHE).rglob("*.pkl")]
    except OSError:
        return False
    return bool(trees) and min(trees) >= _installed_at()


def copy_into(home: Path, owner: int) -> bool:
    """Copy the seed into a new sandbox's ``home`` (owned by host uid ``owner``; -1 keeps the
    service's). False when there is no seed yet or the copy failed (a full disk): the
    sandbox then starts with a cold cache, as before, and nothing half-copied is left."""
    if not _is_current(seed_dir()):
        return False
    seed = seed_dir() / _HOME_CACHE
    target = home / _HOME_CACHE
    try:
        # copy2 keeps the seed's times: parso trusts a cached tree only if it is not older
        # than its source file.
        shutil.copytree(seed, target, symlinks=True)
        for path in [target.parent, target, *target.rglob("*")]:
            os.lchown(path, owner, owner)
    except OSError as exc:
        log.info("no warm completion cache in %s: %s", home, exc)
        shutil.rmtree(home / _HOME_CACHE.parent, ignore_errors=True)
        return False
    return True


async def start_build() -> asyncio.subprocess.Process | None:
    """Start building this runtime's seed in a process at a low CPU priority, unless it
    exists or another one is building it; the caller reaps (or kills) the process returned."""
    seed = seed_dir()
    if _is_current(seed):
        return None
    with _lock(seed, wait=False) as held:
        if not held:
            return None  # another service is building it
    # The builder takes the lock again itself (and finds the seed built if it lost a race).
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"from {__name__} import main; main(idle=True)",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=_builder_env(),
    )


@contextlib.contextmanager
def _lock(seed: Path, *, wait: bool) -> Iterator[bool]:
    """Hold the seed's build lock (an ``flock``: released when the holder dies)."""
    seed.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(seed.parent / f"{seed.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


async def keep_built() -> None:
    """Build the seed if it is missing, and wait for the builder (killed if cancelled)."""
    try:
        process = await start_build()
    except OSError as exc:  # the host cache folder cannot be written, say
        log.warning("cannot build the warm completion cache: %s", exc)
        return
    if process is None:
        return
    try:
        _, stderr = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode == 0:
        log.info("built the warm completion cache for new sandboxes in %s", seed_dir())
    else:
        last = (stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        log.warning(
            "could not build the warm completion cache (exit %s: %s); new sandboxes start "
            "with a cold one, so their first completion is slower",
            process.returncode,
            last,
        )


def _builder_env() -> dict[str, str]:
    """Only what the builder needs: none of the service's secrets. It finds the seed where
    this process does (the same cache root); it points its own home at its build folder."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_CACHE_HOME": str(_cache_root().parent.parent),
        # A background helper writes nothing into the runtime (no __pycache__ folders).
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if "PYTHONPATH" in os.environ:  # where this package comes from, in a source checkout
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def build() -> Path:
    """Build this runtime's seed now (waiting for a build under way elsewhere) and return it.
    Run in a process of its own (``main``): it starts an IPython shell whose Jedi writes into
    a build folder."""
    seed = seed_dir()
    with _lock(seed, wait=True):
        if not _is_current(seed):
            _build_in(seed, seed.parent / f".build-{seed.name}")
    return seed


def _build_in(seed: Path, work: Path) -> None:
    """Complete the probes in an IPython shell whose Jedi caches into ``work``, then move that
    cache into place in one rename."""
    shutil.rmtree(work, ignore_errors=True)  # a build killed half-way
    work.mkdir(parents=True)
    os.environ.update(HOME=str(work), XDG_CACHE_HOME=str(work / ".cache"))
    os.environ["IPYTHONDIR"] = str(work / ".ipython")
    from IPython.core.completer import provisionalcompleter
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns["kept"] = 3
    with provisionalcompleter():
        for text in _PROBES:
            list(shell.Completer.completions(text, len(text)))
    built = work / _HOME_CACHE
    if not built.is_dir():
        raise RuntimeError(f"Jedi wrote no cache under {work}")
    (seed / _HOME_CACHE).parent.mkdir(parents=True, exist_ok=True)
    stale = seed.parent / f".stale-{seed.name}"
    shutil.rmtree(stale, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        # Out of the way in one rename: a service copying it meanwhile gets a whole tree or
        # an error (its sandbox then starts cold), never a mix of old and new.
        (seed / _HOME_CACHE).rename(stale)
    built.rename(seed / _HOME_CACHE)
    shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def main(*, idle: bool = False) -> None:
    """The builder process: build the seed and print where it is."""
    if idle:
        # Mostly the machine's idle time: sandboxes and kernels come first. (Not 19: under a
        # steady load that would starve it for minutes, and every sandbox made meanwhile
        # starts cold.)
        os.nice(10)
    print(build())
