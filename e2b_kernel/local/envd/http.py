"""envd's plain HTTP endpoints (spec 2.1): /health, /files (upload, download) and /envs.

File contents stream between the HTTP connection and the sandbox's agent chunk by chunk, in
both directions, so no file is ever held whole in memory or spooled to the host's disk, and
the service never opens a sandbox file itself (see ``sandbox/file_ops.py``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import posixpath
import zlib
from collections.abc import AsyncIterator
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ..sandbox import LocalSandbox
from ..sandbox.agent_client import AgentGone
from ..sandbox.file_ops import FileOps, FileWriter
from .go_text import errno_text
from .serve_content import (
    SNIFF_BYTES,
    RangeMissesFile,
    last_modified,
    not_modified,
    sniffed_type,
    type_by_name,
    wanted_range,
)
from .user_paths import HOMES, UnresolvablePath, resolve_user_path, unknown_user

MAX_FILE_BYTES = 100 * 1024 * 1024
USERS = tuple(HOMES)  # the users a sandbox has
_INFLATE_STEP = 1024 * 1024
_UPLOAD_REFUSAL = "error resolving path: "


class EnvdError(Exception):
    """An envd error answered as {"code", "message"} with that HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def envd_error(status: int, message: str) -> JSONResponse:
    """envd's JSON error shape."""
    return JSONResponse({"code": status, "message": message}, status)


async def handle_envd_http(request: Request, sandbox: LocalSandbox) -> Response:
    """Answer one plain-HTTP envd request for a live sandbox."""
    path, method = request.url.path, request.method
    try:
        if path == "/health" and method == "GET":
            return Response(status_code=204)
        if path == "/envs" and method == "GET":
            return JSONResponse(sandbox.envs)
        if path == "/files" and method == "GET":
            return await _download(request, FileOps(sandbox.agent))
        if path == "/files" and method == "POST":
            return await _upload(request, FileOps(sandbox.agent))
    except EnvdError as exc:
        return envd_error(exc.status, exc.message)
    return envd_error(404, f"no such envd endpoint: {method} {path}")


def _required(raw: str | None) -> str:
    if not raw:
        raise EnvdError(400, "the path query parameter is required")
    return raw


def _resolved(raw: str | None, user: str, refusal: str) -> str:
    """The path envd would use (``~`` and relative paths from the user's home)."""
    path = _required(raw)
    try:
        return resolve_user_path(path, user)
    except UnresolvablePath as exc:
        raise EnvdError(400, refusal.format(path=path) + str(exc)) from None


def request_user(request: Request) -> str:
    """envd's user: ``?username=``, else a Basic ``user:`` Authorization header, else user."""
    name = request.query_params.get("username")
    header = request.headers.get("authorization", "")
    if not name and header.lower().startswith("basic "):
        try:
            name = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            raise EnvdError(401, "malformed Authorization header") from None
    name = name or "user"
    if name not in USERS:
        raise EnvdError(401, unknown_user(name))
    return name


@contextlib.contextmanager
def _mapped(path: str, *, writing: bool) -> Any:
    """Agent refusals (errnos) as envd's HTTP errors."""
    try:
        yield
    except AgentGone:
        raise EnvdError(502, "the sandbox is not running") from None
    except OSError as exc:  # ConnectionError included: the agent hung up mid-stream
        if exc.errno is None:
            raise EnvdError(502, f"the sandbox agent failed: {exc}") from None
        raise _os_error(path, exc, writing=writing) from None


async def _download(request: Request, ops: FileOps) -> Response:
    """The file, as Go's ``http.ServeContent`` serves it (see serve_content.py)."""
    user = request_user(request)
    refusal = "error expanding and resolving path '{path}': "
    raw_path = request.query_params.get("path")
    path = _resolved(raw_path, user, refusal)
    headers = {"Accept-Ranges": "bytes", "Vary": "Accept-Encoding"}
    range_header = request.headers.get("range")
    with _mapped(path, writing=False):  # with a Range: first only the size, none of the bytes
        read = await ops.read(path, user, length=0 if range_header else None)
    headers["Last-Modified"] = last_modified(read.mtime_ns)
    if not_modified(request.headers.get("if-modified-since"), read.mtime_ns):
        await read.close()
        return Response(status_code=304, headers=headers)
    try:
        wanted = wanted_range(range_header, read.total)
    except RangeMissesFile:
        await read.close()
        headers["Content-Range"] = f"bytes */{read.total}"
        return PlainTextResponse("invalid range: failed to overlap\n", 416, headers=headers)
    status = 200
    if range_header:  # the bytes asked for, or all of them (a Range not understood)
        await read.close()
        offset, length = (wanted.start, wanted.length) if wanted else (0, None)
        with _mapped(path, writing=False):
            read = await ops.read(path, user, offset=offset, length=length)
    if wanted is not None:
        headers["Content-Range"] = wanted.header
        status = 206
    chunks: AsyncIterator[bytes] = read.chunks
    kind = type_by_name(raw_path or path)
    if kind is None and (wanted is None or wanted.start == 0):  # sniffed from what comes
        first = await anext(read.chunks, b"")
        kind, chunks = sniffed_type(first), _prepend(first, read.chunks)
    elif kind is None:
        with _mapped(path, writing=False):
            head = await ops.read(path, user, length=SNIFF_BYTES)
        kind = sniffed_type(b"".join([chunk async for chunk in head.chunks]))
    headers["Content-Length"] = str(read.size)
    return StreamingResponse(chunks, status_code=status, media_type=kind, headers=headers)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


async def _upload(request: Request, ops: FileOps) -> Response:
    user = request_user(request)
    metadata = {
        k[len("x-metadata-") :].lower(): v
        for k, v in request.headers.items()
        if k.lower().startswith("x-metadata-")
    }
    query_path = request.query_params.get("path")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        written = await _upload_multipart(request, ops, user, query_path, metadata)
    else:
        path = _resolved(query_path, user, _UPLOAD_REFUSAL)
        with _mapped(path, writing=True):
            async with ops.writer(path, user, metadata) as writer:
                await _copy_body(request, writer)
                entry = await writer.finish()
        written = [_written(entry, metadata)]
    return JSONResponse(written)


async def _copy_body(request: Request, writer: FileWriter) -> None:
    """The raw (possibly gzip-encoded) body into the writer, inflating as it streams."""
    gzipped = request.headers.get("content-encoding", "").lower() == "gzip"
    inflater = zlib.decompressobj(wbits=31) if gzipped else None
    total = 0
    try:
        async for block in request.stream():
            if inflater is None:
                total = _checked(total, block)
                await writer.write(block)
                continue
            while block:  # max_length bounds what one small compressed block inflates to
                data = inflater.decompress(block, _INFLATE_STEP)
                block = inflater.unconsumed_tail
                total = _checked(total, data)
                await writer.write(data)
        if inflater is not None:
            data = inflater.flush()
            _checked(total, data)
            await writer.write(data)
    except zlib.error as exc:
        raise EnvdError(400, f"the gzip body is corrupt: {exc}") from None


def _checked(total: int, data: bytes) -> int:
    total += len(data)
    if total > MAX_FILE_BYTES:
        raise EnvdError(413, f"file larger than {MAX_FILE_BYTES} bytes")
    return total


async def _upload_multipart(
    request: Request, ops: FileOps, user: str, query_path: str | None, metadata: dict[str, str]
) -> list[dict[str, object]]:
    """Each part named ``file`` streams into its own file as the body arrives.

    The SDK sends ``?path=`` only with a single file; it then names the file of every part, as
    envd's ``resolvePath`` does, and a second part for the same path is refused.
    """
    _kind, options = parse_options_header(request.headers["content-type"])
    boundary = options.get(b"boundary")
    if not boundary:
        raise EnvdError(400, "the multipart body has no boundary")
    parts = _PartEvents()
    parser = MultipartParser(boundary, parts.callbacks())
    written: list[dict[str, object]] = []
    writer: FileWriter | None = None
    size = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            async for chunk in request.stream():
                try:
                    parser.write(chunk)
                except FormParserError as exc:
                    raise EnvdError(400, f"invalid multipart body: {exc}") from None
                for kind, value in parts.take():
                    if kind == "file":
                        # As envd: ?path= names every part's file (a signed URL's path is
                        # the only one it may write), so a second part is refused below.
                        path = _resolved(query_path or value, user, _UPLOAD_REFUSAL)
                        _refuse_second_upload(path, written)
                        with _mapped(path, writing=True):
                            writer = await stack.enter_async_context(
                                ops.writer(path, user, metadata)
                            )
                        size = 0
                    elif kind == "data" and writer is not None:
                        size = _checked(size, value)
                        with _mapped(writer.path, writing=True):
                            await writer.write(value)
                    elif kind == "end" and writer is not None:
                        with _mapped(writer.path, writing=True):
                            entry = await writer.finish()
                        written.append(_written(entry, metadata))
                        writer = None
            parser.finalize()
    except FormParserError as exc:
        raise EnvdError(400, f"invalid multipart body: {exc}") from None
    if writer is not None:
        raise EnvdError(400, "the multipart body ended in the middle of a file")
    if not written:
        raise EnvdError(400, "the multipart body has no part named 'file'")
    return written


class _PartEvents:
    """python-multipart's callbacks, queued as ("file", path) / ("data", bytes) / ("end", "")
    so that the async side can write each chunk to the agent between parser calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._is_file = False

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def take(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events

    def _begin(self) -> None:
        self._disposition, self._is_file = b"", False

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def _headers_finished(self) -> None:
        _kind, options = parse_options_header(self._disposition)
        # Only parts named "file" carry files (envd's form field); others are ignored.
        self._is_file = options.get(b"name") == b"file"
        if self._is_file:
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.events.append(("file", filename))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file and end > start:
            self.events.append(("data", bytes(data[start:end])))

    def _end(self) -> None:
        if self._is_file:
            self.events.append(("end", ""))


def _refuse_second_upload(path: str, written: list[dict[str, object]]) -> None:
    """envd writes the first of two files for one path, then refuses the request."""
    if not any(entry["path"] == path for entry in written):
        return
    message = (
        f"you cannot upload multiple files to the same path '{path}' in one upload request, "
        "only the first specified file was uploaded"
    )
    others = [str(entry["path"]) for entry in written if entry["path"] != path]
    if len(others) > 1:
        message += f", also the following files were uploaded: {', '.join(others)}"
    raise EnvdError(400, message)


def _os_error(path: str, exc: OSError, *, writing: bool) -> EnvdError:
    code = exc.errno
    if code == errno.ENOENT:
        return EnvdError(404, f"path '{path}' does not exist")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY):
        # envd's words: a file it cannot open is a server error, not a 403.
        reason = f"open {path}: {errno_text(code)}"
        if writing:
            return EnvdError(500, f"error opening file: {reason}")
        return EnvdError(500, f"error opening file '{path}': {reason}")
    if code == errno.EISDIR:
        return EnvdError(400, f"path '{path}' is a directory")
    if code == errno.ENXIO:
        return EnvdError(400, f"path '{path}' is not a regular file")
    if code == errno.ENOTDIR:
        return EnvdError(400, f"a parent of '{path}' is not a directory")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return EnvdError(507, "not enough disk space")
    if code in (errno.ELOOP, errno.EINVAL, errno.ENAMETOOLONG):
        return EnvdError(400, f"invalid path '{path}': {exc.strerror}")
    if code in (errno.ENOTSUP, errno.E2BIG, errno.ERANGE):
        return EnvdError(400, f"cannot store the metadata of '{path}': {exc.strerror}")
    return EnvdError(500, f"cannot access '{path}': {exc.strerror}")


def _written(entry: dict[str, Any], metadata: dict[str, str]) -> dict[str, object]:
    written: dict[str, object] = {
        "path": entry["path"],
        "name": posixpath.basename(entry["path"]),
        "type": "file",
    }
    if metadata:
        written["metadata"] = metadata
    return written
