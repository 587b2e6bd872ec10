"""The service's IOPub reader decodes only the messages of its own requests.

With the jupyter transport the notebook's cells run in the very kernel that ``/execute``
uses, so every one of their IOPub messages reaches the service too. Decoding them all cost
the service more CPU per cell than relaying them, and a malformed one (code can send any
bytes through its kernel's session) made the reader fail and the service kill the kernel.
A real ZMQ PUB/SUB pair feeds the service's channel class.
"""

from __future__ import annotations

import asyncio
import uuid

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from e2b_kernel.local.interpreter.kernels import _BoundedIOPubChannel


def test_only_messages_of_routed_requests_are_decoded() -> None:
    async def scenario() -> list[str]:
        context = zmq.asyncio.Context()
        address = f"inproc://iopub-{uuid.uuid4().hex}"
        publisher, subscriber = context.socket(zmq.PUB), context.socket(zmq.SUB)
        publisher.bind(address)
        subscriber.connect(address)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        session = Session(key=b"kernel-key")
        channel = _BoundedIOPubChannel(subscriber, session)
        ours = session.msg("execute_request", {"code": "1"})
        channel.routed = lambda: [ours["header"]["msg_id"].encode()]
        others = session.msg("execute_request", {"code": "2"})
        try:
            # The subscription is live once a message gets through (PUB drops until then).
            while True:
                session.send(publisher, "status", {"execution_state": "busy"}, parent=ours)
                try:
                    await asyncio.wait_for(channel._recv(), 0.2)
                    break
                except asyncio.TimeoutError:
                    continue
            forged = session.msg("stream", {"name": "stdout", "text": "x"}, parent=others)
            frames = session.serialize(forged)
            frames[1] = b"0" * 64  # a wrong signature: decoding it raises
            publisher.send_multipart(frames)
            session.send(publisher, "stream", {"name": "stdout", "text": "other"}, parent=others)
            session.send(publisher, "stream", {"name": "stdout", "text": "ours"}, parent=ours)
            received = await asyncio.wait_for(channel._recv(), 10)
            return [received["content"]["text"]]
        finally:
            subscriber.close(linger=0)
            publisher.close(linger=0)
            context.term()

    assert asyncio.run(scenario()) == ["ours"]
