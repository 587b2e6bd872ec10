"""The only peer of a sandbox kernel's sockets: a process between the kernel and the service.

Why: libzmq takes in a whole multipart message before it hands any part of it over, and its
``MAXMSGSIZE`` bounds a part, not a message. Code in a cell can send anything through its
kernel's session, from untouched memory at no cost to its sandbox: one 8 GiB message made
the service, shared by every sandbox and in no cgroup, hold 8 GiB. So the service no longer
connects to a kernel. This bridge does, as a host process of its own that joins the
sandbox's cgroups before it starts (its memory counts against the sandbox's limit: a flood
ends the bridge or the kernel there, and the service sees the bridge go) and runs as the
sandbox's unprivileged user, outside its namespaces (code inside cannot see or signal it).

It passes on what comes from the service as it is, and from the kernel only a message of at
most ``MAX_BYTES`` in ``MAX_PARTS`` parts whose JSON parts hold at most ``MAX_VALUES`` values
and cost at most ``MAX_JSON_COST`` to decode (what decoding costs the service grows with
values and with a text's widest character: 12 MiB of ``[],`` are 4 M lists, 300 MB and
seconds of its one loop, which every sandbox shares). For another it sends a short one
in its place, signed with the kernel's key: an error reply of the same type, or for IOPub a
stderr stream of the same cell, that says what was dropped. IOPub messages go on only when
they belong to one of the service's last requests (the others are the notebook's, over port
8888, which the service never reads). Towards the service every socket blocks when full instead of
dropping, with a small high-water mark, so what waits in the service is bounded too.

Run as ``python kernel_bridge.py --control-fd N`` (stdlib and pyzmq only; see ``main``): it
starts while the kernel does, takes its orders and the kernel's socket fds in one message on
that unix socket, and ends when the service closes it.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import select
import socket as unix
import sys
from typing import Any

import zmq

MAX_BYTES = 64 << 20  # the largest kernel message passed on (all its parts)
MAX_PARTS = 1024
# JSON values and keys in one message passed on (see the docstring): a million took the
# service 0.9 s of its one loop to decode.
MAX_VALUES = 1 << 18
# Bytes of JSON in one message passed on, one that may widen text counting four: the service
# holds decoded text at up to 4 bytes a character (one emoji in 63 MiB of ASCII cost it 650 MB).
MAX_JSON_COST = 32 << 20
HIGH_WATER = 8  # messages queued towards the service, per socket
_HEADER_BYTES = 64 << 10  # a header or parent header larger than this is not a real one
_RECENT_REQUESTS = 64  # the service's requests whose IOPub messages are passed on
_DELIMITER = b"<IDS|MSG>"
_SEND_WAIT_MS = 1000  # then the bridge checks whether it should stop, and tries again


def too_large_text(size: int) -> str:
    return (
        f"a kernel message of {size >> 20} MiB was dropped: the local E2B service passes on "
        f"at most {MAX_BYTES >> 20} MiB in one message"
    )


def too_many_values_text() -> str:
    return (
        f"a kernel message of over {MAX_VALUES:,} JSON values was dropped: the local E2B "
        f"service passes on at most {MAX_VALUES:,} in one message"
    )


def too_much_json_text(cost: int) -> str:
    return (
        f"a kernel message of {cost >> 20} MiB of JSON (text beyond ASCII counts four times) "
        f"was dropped: the local E2B service decodes at most {MAX_JSON_COST >> 20} MiB in one "
        "message; binary data can go in its buffers"
    )


def json_cost(parts: list[bytes]) -> int:
    """What decoding ``parts`` costs, in bytes of ASCII: a part with a byte beyond ASCII or a
    ``\\u`` escape may hold characters that widen all of its text (Python keeps a string at
    1, 2 or 4 bytes a character, by its widest), so it counts four times its size."""
    return sum(len(raw) * (1 if raw.isascii() and b"\\u" not in raw else 4) for raw in parts)


def json_values_over(limit: int, parts: list[bytes]) -> bool:
    """Whether the JSON ``parts`` hold over ``limit`` values and keys in all (or one is not
    JSON).

    Each value or key but the first follows a ``,``, ``:``, ``[`` or ``{``: counting those
    bounds them from above without decoding. Only a part over the bound by that count is
    decoded, here (at the sandbox's expense), and counted exactly: a long text full of
    commas is one value."""
    budget = limit
    for raw in parts:
        bound = 1 + sum(raw.count(mark) for mark in (b",", b":", b"[", b"{"))
        if bound <= budget:
            budget -= bound
            continue
        try:
            budget = _left_after(json.loads(raw), budget)
        except (ValueError, RecursionError):
            return True
        if budget < 0:
            return True
    return False


def _left_after(value: Any, budget: int) -> int:
    """``budget`` less the values and keys in ``value``; negative once it runs out (a long list
    ends the count before it is walked)."""
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        children: Any
        if isinstance(item, dict):
            budget -= len(item)  # its keys
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if len(children) > budget:  # each costs at least one more
            return -1
        stack.extend(children)
    return budget


class _Signer:
    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def sign(self, parts: list[bytes]) -> bytes:
        mac = self._mac.copy()
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()


Split = tuple[list[bytes], list[zmq.Frame]]  # routing frames, and the parts after the delimiter


def _split(frames: list[zmq.Frame]) -> Split | None:
    """Routing frames and the message's parts after the delimiter; None if there is none (or
    the message has too many parts to be one the bridge passes on)."""
    if len(frames) > MAX_PARTS + 8:
        return None
    for index, frame in enumerate(frames):
        if len(frame) == len(_DELIMITER) and frame.bytes == _DELIMITER:
            return [f.bytes for f in frames[:index]], frames[index + 1 :]
    return None


def in_place_of(channel: str, split: Split | None, why: str, signer: _Signer) -> list[bytes] | None:
    """A short message that says ``why`` the message ``split`` was dropped; None when the
    dropped one has no readable header (then nothing goes on)."""
    if split is None:
        return None
    idents, parts = split
    if len(parts) < 3 or len(parts[1]) > _HEADER_BYTES or len(parts[2]) > _HEADER_BYTES:
        return None
    try:
        header, parent = json.loads(parts[1].bytes), json.loads(parts[2].bytes)
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or not isinstance(parent, dict):
        return None
    content: dict[str, Any]
    if channel == "iopub":
        header = {**header, "msg_type": "stream"}
        text = f"[{why}; print and display send theirs in smaller pieces]\n"
        content = {"name": "stderr", "text": text}
    else:
        content = {
            "status": "error",
            "ename": "MessageTooLarge",
            "evalue": why,
            "traceback": [],
            "execution_count": 0,
        }
    body = [json.dumps(x).encode() for x in (header, parent, {}, content)]
    return [*idents, _DELIMITER, signer.sign(body), *body]


def _decoding_problem(split: Split | None) -> str | None:
    """Why decoding the header, parent header, metadata and content (what the service
    decodes; the buffers after them it does not) would cost the service too much, if it would.

    Neither bound can be passed by a message of at most ``MAX_VALUES`` bytes (a value takes a
    byte or more, a byte costs four at most), so smaller ones are not looked at."""
    if split is None:
        return None  # not a message: the service drops it undecoded
    parts = [part.bytes for part in split[1][1:5]]
    cost = json_cost(parts)
    if cost > MAX_JSON_COST:
        return too_much_json_text(cost)
    if json_values_over(MAX_VALUES, parts):
        return too_many_values_text()
    return None


class Bridge:
    """The sockets and the loop (see the module's docstring)."""

    def __init__(self, config: dict[str, Any], control: unix.socket) -> None:
        self.control = control.fileno()
        self.context = zmq.Context()
        self.signer = _Signer(config["key"].encode())
        self.recent: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.kernel: dict[str, zmq.Socket] = {}
        self.service: dict[str, zmq.Socket] = {}
        for channel in ("shell", "control", "iopub"):
            inner = self.context.socket(zmq.SUB if channel == "iopub" else zmq.DEALER)
            if channel == "iopub":
                inner.setsockopt(zmq.SUBSCRIBE, b"")
            else:
                inner.setsockopt(zmq.IDENTITY, os.urandom(16))  # replies survive a reconnect
            inner.setsockopt(zmq.LINGER, 0)
            inner.connect(config["kernel"][channel])
            outer = self.context.socket(zmq.PAIR if channel == "iopub" else zmq.DEALER)
            outer.setsockopt(zmq.SNDHWM, HIGH_WATER)
            outer.setsockopt(zmq.SNDTIMEO, _SEND_WAIT_MS)
            outer.setsockopt(zmq.LINGER, 0)
            outer.bind(config["service"][channel])
            self.kernel[channel], self.service[channel] = inner, outer
        self.poller = zmq.Poller()
        for socket in (*self.kernel.values(), self.service["shell"], self.service["control"]):
            self.poller.register(socket, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)

    def run(self) -> None:
        while True:
            for socket, _ in self.poller.poll():
                if socket == self.control:
                    if self._told_to_stop():
                        return
                    continue
                channel = self._channel_of(socket)
                if socket is self.kernel[channel]:
                    self._from_kernel(channel, socket.recv_multipart(copy=False))
                else:
                    self._pass_requests()

    def _channel_of(self, socket: zmq.Socket) -> str:
        for channel in ("shell", "control", "iopub"):
            if socket is self.kernel[channel] or socket is self.service[channel]:
                return channel
        raise AssertionError("a socket the bridge did not make")

    def _remember(self, frames: list[zmq.Frame]) -> None:
        """Keep the msg_id of a request from the service: its IOPub messages will go on."""
        split = _split(frames)
        if split is None or len(split[1]) < 2:
            return
        try:
            msg_id = json.loads(split[1][1].bytes).get("msg_id")
        except (ValueError, AttributeError):
            return
        if isinstance(msg_id, str) and msg_id:
            key = msg_id.encode()
            self.recent[key] = None
            self.recent.move_to_end(key)
            while len(self.recent) > _RECENT_REQUESTS:
                self.recent.popitem(last=False)

    def _from_kernel(self, channel: str, frames: list[zmq.Frame]) -> None:
        split = _split(frames)
        if channel == "iopub" and not self._for_the_service(split):
            return
        size = sum(len(frame) for frame in frames)
        if size > MAX_BYTES or len(frames) > MAX_PARTS:
            why = too_large_text(size)
        elif size > MAX_VALUES and (problem := _decoding_problem(split)):  # see the function
            why = problem
        else:
            self._send(self.service[channel], frames)
            return
        replacement = in_place_of(channel, split, why, self.signer)
        if replacement is not None:
            self._send(self.service[channel], replacement)

    def _for_the_service(self, split: Split | None) -> bool:
        if split is None or len(split[1]) < 3 or len(split[1][2]) > _HEADER_BYTES:
            return False
        parent = split[1][2].bytes
        return any(msg_id in parent for msg_id in self.recent)

    def _send(self, socket: zmq.Socket, frames: list[Any]) -> None:
        """Send, waiting while the service's side is full (never dropping), until told to
        stop. Meanwhile the service's requests still go on (an interrupt, above all)."""
        while True:
            try:
                socket.send_multipart(frames, copy=False)
                return
            except zmq.Again:
                readable, _, _ = select.select([self.control], [], [], 0)
                if readable and self._told_to_stop():
                    raise SystemExit(0) from None
                self._pass_requests()

    def _told_to_stop(self) -> bool:
        """The service closed the control socket: it is done with the kernel."""
        try:
            return not os.read(self.control, 4096)
        except OSError:
            return True

    def _pass_requests(self) -> None:
        for channel in ("control", "shell"):
            while self.service[channel].poll(0):
                frames = self.service[channel].recv_multipart(copy=False)
                self._remember(frames)
                self.kernel[channel].send_multipart(frames, copy=False)


def main() -> None:
    """One message on the control socket (``--control-fd``): ``{"kernel": {channel: index of
    its fd in the message}, "service": {channel: url}, "key": str, "uid": int, "gid": int}``
    for shell, control and iopub, with the kernel's socket fds (O_PATH, opened safely by the
    service); uid and gid -1 keep ours. Prints "ready" once its sockets are bound."""
    if sys.argv[1:2] != ["--control-fd"] or len(sys.argv) != 3:
        raise SystemExit("usage: kernel_bridge.py --control-fd N")
    control = unix.socket(fileno=int(sys.argv[2]))
    data, fds, _, _ = unix.recv_fds(control, 1 << 16, 16)
    if not data:
        return  # the service gave up before the kernel was up
    config = json.loads(data)
    config["kernel"] = {
        channel: f"ipc:///proc/self/fd/{fds[index]}" for channel, index in config["kernel"].items()
    }
    # What a flood makes the bridge hold counts against the sandbox: at its memory limit the
    # bridge should be what goes, not the kernel or the sandbox's Jupyter Server.
    with open("/proc/self/oom_score_adj", "w") as oom_score:
        oom_score.write("1000")
    if config["uid"] >= 0:  # as root, before anything reads what the sandbox wrote
        _leave_the_hosts_network()
    if config["gid"] >= 0:
        os.setgroups([])
        os.setresgid(config["gid"], config["gid"], config["gid"])
    if config["uid"] >= 0:
        os.setresuid(config["uid"], config["uid"], config["uid"])
    _no_new_privileges()
    bridge = Bridge(config, control)
    print("ready", flush=True)
    bridge.run()


def _libc_call(name: str, *args: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}: {os.strerror(error)}")


def _leave_the_hosts_network() -> None:
    """An empty network namespace of its own: the bridge parses what sandbox code sends, and
    a libzmq bug there must not open host ports to it. Its sockets are unix sockets by path
    (or fd), which a network namespace does not hide."""
    _libc_call("unshare", 0x40000000)  # CLONE_NEWNET


def _no_new_privileges() -> None:
    """No setuid program it could run would gain anything."""
    _libc_call("prctl", 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS


if __name__ == "__main__":
    main()
