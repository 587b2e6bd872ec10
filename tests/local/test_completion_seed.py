"""New sandboxes start with a warm Jedi cache (their first Tab completion does not parse the
typeshed stubs again), built by the service on the host; no sandbox can poison it."""

from __future__ import annotations

import hashlib
import json
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
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*.pkl"))
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


def test_a_service_builds_the_seed_and_later_sandboxes_complete_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    service = start_subprocess(pool_size=0)
    try:
        seeds = cache_home / "e2b-kernel" / "completion-seed"
        # The service builds it in the background at a low priority: a loaded machine slows it.
        # ("[!.]*": not the build folder, where the cache grows before it is moved in.)
        wait_for(lambda: any(seeds.glob("[!.]*/.cache/jedi/*/*.pkl")), 300, "the seed")
        box = Sandbox.create(**sdk_options(service))
        try:
            found = complete_in(box)
        finally:
            box.kill()
    finally:
        service.stop()
    assert "kept" in found["matches"]
    assert found["before"], "the sandbox's home has no completion cache"
    assert found["after"] == found["before"], "the first completion had to parse stubs again"
    assert found["owners"] == [1000], "the copy must belong to the sandbox's user"
    assert not list(seeds.glob(".build-*")), "the build folder was left behind"


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
