"""``core/rest.py``: the kernel's small requests, against real loopback servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from loopback_server import LoopbackServer, free_port
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from e2b_kernel.core import rest

pytestmark = pytest.mark.timeout(60)


class Server(LoopbackServer):
    """Also keeps the headers of each request its routes record in ``seen``."""

    def __init__(self, routes: list[Route]) -> None:
        super().__init__(routes)
        self.seen: list[dict[str, str]] = []

    def __enter__(self) -> Server:
        super().__enter__()
        return self


@pytest.fixture
def elsewhere() -> Iterator[Server]:
    """Another host's server, recording what reaches it."""
    holder: list[Server] = []

    async def record(request: Request) -> Response:
        holder[0].seen.append(dict(request.headers))
        return PlainTextResponse("elsewhere")

    with Server([Route("/{path:path}", record)]) as server:
        holder.append(server)
        yield server


@pytest.fixture
def api(elsewhere: Server) -> Iterator[Server]:
    async def echo(request: Request) -> Response:
        return JSONResponse({"method": request.method, "body": (await request.body()).decode()})

    async def away(request: Request) -> Response:
        return RedirectResponse(f"{elsewhere.url}/stolen", status_code=302)

    async def broken(request: Request) -> Response:
        return PlainTextResponse("the server broke", status_code=500)

    routes = [
        Route("/echo", echo, methods=["GET", "POST", "DELETE"]),
        Route("/away", away, methods=["GET", "POST"]),
        Route("/broken", broken),
    ]
    with Server(routes) as server:
        yield server


def test_json_goes_out_compact_and_every_status_comes_back(api: Server) -> None:
    async def calls() -> tuple[rest.Reply, rest.Reply]:
        posted = await rest.request(
            "POST", f"{api.url}/echo", json_body={"name": "python3", "ü": 1}, timeout=10
        )
        failed = await rest.request("GET", f"{api.url}/broken", timeout=10)
        return posted, failed

    posted, failed = asyncio.run(calls())
    assert posted.status == 200
    assert posted.json() == {"method": "POST", "body": '{"name":"python3","ü":1}'}
    assert (failed.status, failed.text) == (500, "the server broke")


def test_a_redirect_is_not_followed_so_keys_stay_with_their_host(
    api: Server, elsewhere: Server
) -> None:
    """An attack: a server that redirects must not receive nor pass on the key elsewhere."""
    headers = {"X-API-KEY": "e2b_secret_key", "E2B-Traffic-Access-Token": "secret_token"}
    reply = asyncio.run(
        rest.request("POST", f"{api.url}/away", headers=headers, json_body={}, timeout=10)
    )
    assert reply.status == 302
    assert elsewhere.seen == []


def test_no_answer_says_whether_the_request_can_have_arrived() -> None:
    with pytest.raises(rest.NoAnswer) as refused:
        asyncio.run(rest.request("POST", f"http://127.0.0.1:{free_port()}/", timeout=5))
    assert refused.value.sent is False
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(rest.NoAnswer) as timed_out:
            asyncio.run(rest.request("POST", url, json_body={}, timeout=0.5))
    assert timed_out.value.sent is True
