"""Credentials as E2B checks them: API key, envd access token, signed file URLs, traffic token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b import AuthenticationException, Sandbox
from e2b_code_interpreter import Sandbox as CodeSandbox
from local_helpers import sandbox_headers, sdk_options

from e2b_kernel.local import RunningService, start_in_thread


@pytest.fixture(scope="module")
def secured(local_service: RunningService) -> Iterator[CodeSandbox]:
    sandbox = CodeSandbox.create(timeout=300, **sdk_options(local_service))
    try:
        yield sandbox
    finally:
        sandbox.kill()


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] in (401, "unauthenticated")


def test_wrong_api_key_is_refused(local_service: RunningService) -> None:
    wrong = {**sdk_options(local_service), "api_key": "e2b_" + "0" * 40}
    with pytest.raises(AuthenticationException):
        Sandbox.create(timeout=30, **wrong)
    with pytest.raises(AuthenticationException):
        Sandbox.list(**wrong).next_items()
    reply = httpx.get(f"{local_service.url}/v2/sandboxes", headers={"X-API-Key": "anything"})
    assert reply.status_code == 401
    assert set(reply.json()) == {"code", "message"}


def test_the_key_is_random_per_start_unless_given() -> None:
    first = start_in_thread()
    try:
        second = start_in_thread()
        try:
            assert first.api_key.startswith("e2b_") and len(first.api_key) > 20
            assert first.api_key != second.api_key
        finally:
            second.stop()
    finally:
        first.stop()
    given = start_in_thread(api_key="e2b_chosen_for_this_test")
    try:
        assert given.api_key == "e2b_chosen_for_this_test"
        with pytest.raises(AuthenticationException):
            Sandbox.list(api_key="e2b_other", api_url=given.url).next_items()
    finally:
        given.stop()


def test_envd_and_execute_need_the_access_token(
    local_service: RunningService, secured: CodeSandbox
) -> None:
    assert secured._envd_access_token
    bare = {"E2b-Sandbox-Id": secured.sandbox_id, "E2b-Sandbox-Port": "49983"}
    wrong = {**bare, "X-Access-Token": "not-the-token"}
    with httpx.Client(base_url=local_service.url, timeout=60) as http:
        assert http.get("/health", headers=bare).status_code == 204  # open, as envd's
        for headers in (bare, wrong):
            _refused(http.get("/files", params={"path": "/etc/hostname"}, headers=headers))
            _refused(http.post("/files?path=x.txt", files={"file": b"x"}, headers=headers))
            _refused(http.get("/envs", headers=headers))
            stat = http.post("/filesystem.Filesystem/Stat", json={"path": "/"}, headers=headers)
            _refused(stat)
            for path in ("/execute", "/execute/", "/execute//"):  # routed alike inside
                execute = http.post(
                    path,
                    json={"code": "open('/home/user/ran', 'w')"},
                    headers={**headers, "E2b-Sandbox-Port": "49999"},
                )
                _refused(execute)
        assert not secured.files.exists("/home/user/ran")
        ok = http.get("/envs", headers=sandbox_headers(secured))
        assert ok.status_code == 200
    # The SDK sends the token on every call, so everything works through it.
    secured.files.write("/home/user/auth.txt", "through the SDK")
    assert secured.files.read("/home/user/auth.txt") == "through the SDK"
    assert secured.commands.run("echo ok").stdout == "ok\n"
    assert secured.run_code("6 * 7").text == "42"


def test_signed_urls_work_and_tampered_or_expired_ones_are_refused(
    secured: CodeSandbox,
) -> None:
    secured.files.write("/home/user/signed.txt", "signed content")
    url = secured.download_url("/home/user/signed.txt")
    assert "signature=v1_" in url
    with httpx.Client(timeout=60) as http:
        got = http.get(url)  # no headers at all: the signature names the sandbox
        assert got.status_code == 200, got.text
        assert got.content == b"signed content"
        upload = secured.upload_url("/home/user/uploaded.txt")
        assert http.post(upload, files={"file": b"via url"}).status_code == 200
        assert secured.files.read("/home/user/uploaded.txt") == "via url"
        _refused(http.get(url.replace("signature=v1_", "signature=v1_X")))
        _refused(http.get(url.replace("signed.txt", "uploaded.txt")))  # signed for another path
        _refused(http.post(url, files={"file": b"x"}))  # a read signature does not write
        expired = secured.download_url("/home/user/signed.txt", use_signature_expiration=-60)
        _refused(http.get(expired))
        later = secured.download_url("/home/user/signed.txt", use_signature_expiration=600)
        assert http.get(later).content == b"signed content"


def test_restricted_public_traffic_needs_the_traffic_token(local_service: RunningService) -> None:
    sandbox = CodeSandbox.create(
        timeout=120, network={"allow_public_traffic": False}, **sdk_options(local_service)
    )
    try:
        assert sandbox.traffic_access_token
        assert sandbox.run_code("1 + 1").text == "2"  # the SDK sends the traffic token
        headers = sandbox_headers(sandbox, 49999)
        reply = httpx.post(f"{local_service.url}/execute", json={"code": "1"}, headers=headers)
        assert reply.status_code == 403, reply.text  # E2B's proxy: 403, missing or wrong
        assert "traffic access token" in reply.json()["message"]
        # envd is not behind the traffic token, as on E2B.
        assert sandbox.commands.run("echo envd").stdout == "envd\n"
    finally:
        sandbox.kill()
