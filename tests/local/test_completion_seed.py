"""New sandboxes start with a warm Jedi cache (their first Tab completion does not parse the
typeshed stubs again), built by the service on the host; no sandbox can poison it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2b_code_interpreter import Sandbox
from local_helpers import sdk_options, wait_for

from e2b_kernel.local import RunningService, start_subprocess
from e2b_kernel.local.sandbox import completion_seed

# Completes "ke" in the sandbox's own kernel as a notebook's Tab does, and reports the cache
# files before and after, with their owners.
COMPLETE_AND_LIST = """
import json, pathlib
from IPython.core.completer import provisionalcompleter
cache = pathlib.Path.home() / ".cache" / "jedi"
def listing():
    # With size and time: parso rewrites a tree it had to parse again under the same name.
    return sorted(
        (str(p.relative_to(cache)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in cache.rglob("*.pkl")
    )
before = listing()
owners = sorted({p.lstat().st_uid for p in [cache.parent, *cache.rglob("*")] if before})
kept = 3
with provisionalcompleter():
    matches = [c.text for c in get_ipython().Completer.completions("ke", 2)]
print(json.dumps({"before": before, "after": listing(), "owners": owners, "matches": matches}))
"""


def complete_in(box: Sandbox) -> dict:
    execution = box.run_code(COMPLETE_AND_LIST, timeout=120)
    assert execution.error is None, execution.error
    return json.loads("".join(execution.logs.stdout))


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.pkl"))
    }


def first_completion_with_seed(seeds: Path, built_after: float = 0.0) -> dict:
    """Start a service (which builds the seed in ``seeds`` unless it has a current one), wait
    for a seed built after ``built_after``, and complete in a new sandbox. (Under the suite's
    120 s test timeout, so that a service that never builds fails with its own message.)"""
    service = start_subprocess(pool_size=0)
    try:
        # The service builds it in the background at a low priority: a loaded machine slows it.
        # ("[!.]*": not the build folder, where the cache grows before it is moved in.)
        wait_for(
            lambda: any(
                p.stat().st_mtime > built_after for p in seeds.glob("[!.]*/.cache/jedi/*/*.pkl")
            ),
            100,
            "a seed built after the given time",
        )
        box = Sandbox.create(**sdk_options(service))
        try:
            return complete_in(box)
        finally:
            box.kill()
    finally:
        service.stop()


def test_a_service_builds_the_seed_and_later_sandboxes_complete_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    seeds = cache_home / "e2b-kernel" / "completion-seed"
    found = first_completion_with_seed(seeds)
    assert "kept" in found["matches"]
    assert found["before"], "the sandbox's home has no completion cache"
    assert found["after"] == found["before"], "the first completion had to parse stubs again"
    assert found["owners"] == [1000], "the copy must belong to the sandbox's user"
    assert not list(seeds.glob(".build-*")), "the build folder was left behind"


def test_a_seed_older_than_the_installed_runtime_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seed made before the runtime was installed again (a new venv where the old one was)
    has the same key, but parso finds each of its trees older than its source and parses the
    source again in every sandbox: the service must build a new seed, not hand out that one."""
    cache_home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    built = subprocess.run(
        [sys.executable, "-c", "from e2b_kernel.local.sandbox.completion_seed import main; main()"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seed = Path(built.stdout.strip())
    assert seed.is_relative_to(cache_home), built.stdout
    made_before_install = 1_000_000_000.0  # 2001: older than any installed source
    for tree in (seed / ".cache" / "jedi").rglob("*.pkl"):
        os.utime(tree, (made_before_install, made_before_install))
    found = first_completion_with_seed(seed.parent, built_after=made_before_install)
    assert "kept" in found["matches"]
    assert found["before"], "the sandbox's home has no completion cache"
    assert found["after"] == found["before"], "the sandbox got a stale seed and parsed again"
    assert not list(seed.parent.glob(".stale-*")), "the stale seed was left behind"


def test_a_sandbox_cannot_poison_the_completion_cache_of_later_sandboxes(
    local_service: RunningService,
) -> None:
    seed = completion_seed.seed_dir() / ".cache" / "jedi"
    assert seed.is_dir(), "the session's seed should have been built (tests/conftest.py)"
    original = hashes(seed)
    options = sdk_options(local_service)
    attacker = Sandbox.create(**options)
    try:
        poisoned = attacker.run_code(
            "import pathlib\n"
            "files = list((pathlib.Path.home() / '.cache' / 'jedi').rglob('*.pkl'))\n"
            "for f in files: f.write_bytes(b'poison')\n"
            "len(files)"
        )
        assert poisoned.error is None and int(poisoned.text or 0) > 0
        victim = Sandbox.create(**options)
        try:
            listed = victim.run_code(
                "import hashlib, json, pathlib\n"
                "cache = pathlib.Path.home() / '.cache' / 'jedi'\n"
                "print(json.dumps({str(p.relative_to(cache)): hashlib.sha256(p.read_bytes())"
                ".hexdigest() for p in sorted(cache.rglob('*.pkl'))}))"
            )
            assert listed.error is None, listed.error
            found = complete_in(victim)
        finally:
            victim.kill()
    finally:
        attacker.kill()
    assert hashes(seed) == original, "a sandbox wrote into the host's seed"
    assert json.loads("".join(listed.logs.stdout)) == original, "the next sandbox's copy differs"
    assert "kept" in found["matches"]


def test_two_environments_of_one_python_have_seeds_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two venvs of one interpreter with the same versions of Jedi, parso and IPython: their
    seeds must differ, since parso finds a cached tree by its source's path (one venv's seed
    replaced the other's, and its first completion then parsed every stub again)."""
    keys = []
    for venv in ("one", "two"):
        packages = tmp_path / venv / "site-packages"
        (packages / "jedi-0.19.2.dist-info").mkdir(parents=True)
        monkeypatch.setattr(sys, "path", [str(packages)])
        keys.append(completion_seed.seed_dir.__wrapped__())
    assert keys[0] != keys[1]
