"""Control-plane answers as E2B gives them, through the unmodified SDK (sync and async):
creating from a deleted or unknown snapshot is E2B's 404, and connect keeps the routing
headers and tokens that create gave."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from e2b import AsyncSandbox, Sandbox
from e2b.exceptions import SandboxException

pytestmark = pytest.mark.usefixtures("sdk_env")


def _routing(sbx: Sandbox | AsyncSandbox) -> tuple:
    config = sbx.connection_config
    return (
        sbx.sandbox_id,
        sbx._envd_access_token,  # the SDK keeps them private; they make its headers
        sbx.traffic_access_token,
        config.sandbox_headers.get("E2b-Sandbox-Id"),
        config.sandbox_headers.get("X-Access-Token"),
    )


def test_create_from_deleted_or_unknown_snapshot_is_404_sync() -> None:
    source = Sandbox.create(timeout=60)
    name = f"gone-{uuid.uuid4().hex[:8]}"
    try:
        source.files.write("kept.txt", "x")
        unnamed = source.create_snapshot()
        named = source.create_snapshot(name=name)
        assert Sandbox.delete_snapshot(unnamed.snapshot_id)
        assert Sandbox.delete_snapshot(named.snapshot_id)
    finally:
        source.kill()
    for wanted in (unnamed.snapshot_id, named.snapshot_id, name, "snap0000000000000000"):
        with pytest.raises(SandboxException, match=f"404: template '{wanted}' not found") as err:
            Sandbox.create(wanted, timeout=30)
        assert err.value.status_code == 404  # type: ignore[attr-defined]


def test_create_from_unknown_snapshot_is_404_async() -> None:
    async def scenario() -> None:
        with pytest.raises(SandboxException, match="404: template 'local/nope:latest'"):
            await AsyncSandbox.create("local/nope:latest", timeout=30)

    asyncio.run(scenario())


def test_connect_keeps_routing_headers_and_tokens() -> None:
    public = Sandbox.create(timeout=60)
    private = Sandbox.create(timeout=60, network={"allow_public_traffic": False})
    try:
        for sbx in (public, private):
            again = Sandbox.connect(sbx.sandbox_id, timeout=60)
            assert _routing(again) == _routing(sbx)
            assert _routing(sbx.connect(timeout=60)) == _routing(sbx)
            assert again.commands.run("echo ok").stdout == "ok\n"
        assert public.traffic_access_token is None  # unset, not "" or a stray value
        assert isinstance(private.traffic_access_token, str)

        async def via_async() -> None:
            for sbx in (public, private):
                again = await AsyncSandbox.connect(sbx.sandbox_id, timeout=60)
                assert _routing(again) == _routing(sbx)

        asyncio.run(via_async())
    finally:
        public.kill()
        private.kill()
