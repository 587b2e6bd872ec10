"""envd's plain HTTP endpoints (spec 2.1): /health, /files (upload, download) and /envs."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import zlib
from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .paths import SANDBOX_HOME, ResolvedPath, safe_open
from .sandbox import LocalSandbox

MAX_FILE_BYTES = 100 * 1024 * 1024
_CHUNK = 256 * 1024


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
            return _download(request, sandbox)
        if path == "/files" and method == "POST":
            return await _upload(request, sandbox)
    except EnvdError as exc:
        return envd_error(exc.status, exc.message)
    return envd_error(404, f"no such envd endpoint: {method} {path}")


def sandbox_path(raw: str | None) -> str:
    """Normalise a requested path (relative ones are under /home/user)."""
    if raw is None or raw == "":
        raise EnvdError(400, "the path query parameter is required")
    return posixpath.normpath(posixpath.join(SANDBOX_HOME, raw))


def _resolve(sandbox: LocalSandbox, path: str) -> ResolvedPath:
    try:
        return sandbox.paths.to_host(path)
    except (OSError, ValueError) as exc:
        raise EnvdError(400, f"invalid path '{path}': {exc}") from None


def _download(request: Request, sandbox: LocalSandbox) -> Response:
    path = sandbox_path(request.query_params.get("path"))
    resolved = _resolve(sandbox, path)
    try:
        # O_NONBLOCK: opening a FIFO made by sandbox code must not block the whole service.
        fd = safe_open(resolved, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise EnvdError(404, f"path '{path}' does not exist") from None
    except IsADirectoryError:
        raise EnvdError(400, f"path '{path}' is a directory") from None
    except OSError as exc:
        raise _os_error(path, exc) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise EnvdError(400, f"path '{path}' is {kind}")
    os.set_blocking(fd, True)

    async def chunks() -> AsyncIterator[bytes]:
        remaining = info.st_size  # exactly Content-Length, even if the file grows meanwhile
        with os.fdopen(fd, "rb") as handle:
            while remaining > 0 and (block := handle.read(min(_CHUNK, remaining))):
                remaining -= len(block)
                yield block

    headers = {"Content-Length": str(info.st_size)}
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


async def _upload(request: Request, sandbox: LocalSandbox) -> Response:
    content_type = request.headers.get("content-type", "")
    metadata = {
        k[len("x-metadata-") :].lower(): v
        for k, v in request.headers.items()
        if k.lower().startswith("x-metadata-")
    }
    query_path = request.query_params.get("path")
    written = []
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=10000, max_fields=10000)
        try:
            files = [v for k, v in form.multi_items() if k == "file" and isinstance(v, UploadFile)]
            if not files:
                raise EnvdError(400, "the multipart body has no part named 'file'")
            for upload in files:
                target = query_path if (query_path and len(files) == 1) else upload.filename
                path = sandbox_path(target)
                fd = _open_for_write(sandbox, path)
                with os.fdopen(fd, "wb") as handle:
                    while block := await upload.read(_CHUNK):
                        handle.write(block)
                _set_metadata(sandbox, path, metadata)
                written.append(_entry(path, metadata))
        finally:
            await form.close()
    else:
        path = sandbox_path(query_path)
        gzipped = request.headers.get("content-encoding", "").lower() == "gzip"
        inflater = zlib.decompressobj(wbits=31) if gzipped else None
        fd = _open_for_write(sandbox, path)
        total = 0
        with os.fdopen(fd, "wb") as handle:
            try:
                async for block in request.stream():
                    data = inflater.decompress(block) if inflater else block
                    total += len(data)
                    if total > MAX_FILE_BYTES:
                        raise EnvdError(413, f"file larger than {MAX_FILE_BYTES} bytes")
                    handle.write(data)
                if inflater:
                    handle.write(inflater.flush())
            except zlib.error as exc:
                raise EnvdError(400, f"the gzip body is corrupt: {exc}") from None
        _set_metadata(sandbox, path, metadata)
        written.append(_entry(path, metadata))
    return JSONResponse(written)


def _open_for_write(sandbox: LocalSandbox, path: str) -> int:
    resolved = _resolve(sandbox, path)
    try:
        resolved.require_writable()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK
        fd = safe_open(resolved, flags, parents=True)
    except IsADirectoryError:
        raise EnvdError(400, f"path '{path}' is a directory") from None
    except OSError as exc:
        raise _os_error(path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise EnvdError(400, f"path '{path}' is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _os_error(path: str, exc: OSError) -> EnvdError:
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return EnvdError(403, f"permission denied: '{path}' is not writable (read-only)")
    if exc.errno == errno.ELOOP:
        return EnvdError(400, f"path '{path}' goes through a symlink that changed; retry")
    if exc.errno == errno.ENOTDIR:
        return EnvdError(400, f"a parent of '{path}' is not a directory")
    if exc.errno == errno.ENOSPC:
        return EnvdError(507, "not enough disk space")
    if exc.errno == errno.ENXIO:
        return EnvdError(400, f"path '{path}' is not a regular file")
    if exc.errno == errno.EISDIR:
        return EnvdError(400, f"path '{path}' is a directory")
    return EnvdError(500, f"cannot access '{path}': {exc.strerror}")


def _set_metadata(sandbox: LocalSandbox, path: str, metadata: dict[str, str]) -> None:
    if not metadata:
        return
    host = sandbox.paths.to_host(path).host
    for key, value in metadata.items():
        try:
            os.setxattr(host, f"user.e2b.{key}", value.encode(), follow_symlinks=False)
        except OSError as exc:
            raise EnvdError(400, f"cannot store metadata {key!r}: {exc.strerror}") from None


def _entry(path: str, metadata: dict[str, str]) -> dict[str, object]:
    entry: dict[str, object] = {"path": path, "name": posixpath.basename(path), "type": "file"}
    if metadata:
        entry["metadata"] = metadata
    return entry
