"""Read a request body (or its first Connect envelope) ahead of the plane, then replay it.

The guards must see a body before the plane parses it; the plane must still receive
exactly the bytes the client sent, as ASGI messages.
"""

from __future__ import annotations

from starlette.types import Message, Receive


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that yields the messages already read, then reads on."""
    pending = list(messages)

    async def replaying_receive() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replaying_receive


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body (the caller's receive already bounds its size), and a replay."""
    chunks: list[bytes] = []
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # the client went away; the plane sees the disconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks), _replay(messages, receive)


async def read_first_envelope(receive: Receive) -> tuple[bytes | None, Receive]:
    """The first message of a Connect stream (5-byte prefix, then JSON), and a replay.

    Only the first message is read ahead: a client stream (StreamInput) stays open, and
    its later messages flow to the plane untouched.
    """
    buffered = b""
    messages: list[Message] = []
    more = True
    while True:
        if len(buffered) >= 5:
            size = int.from_bytes(buffered[1:5], "big")
            if len(buffered) >= 5 + size:
                compressed = buffered[0] & 1
                first = None if compressed else buffered[5 : 5 + size]
                return first, _replay(messages, receive)
        if not more:
            return None, _replay(messages, receive)  # truncated: the plane reports it
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, _replay(messages, receive)
        buffered += message.get("body", b"")
        more = bool(message.get("more_body"))
