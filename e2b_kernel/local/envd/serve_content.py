"""What envd's file download adds to the bytes: Go's ``http.ServeContent`` headers.

A single ``Range`` (206 with ``Content-Range``, 416 when it misses the file),
``Last-Modified`` with ``If-Modified-Since`` (304), ``Accept-Ranges``, and a ``Content-Type``
from the path's extension, else sniffed from the first bytes as Go's
``http.DetectContentType`` does for the common cases. (envd also compresses when asked for
gzip; this serves identity, which every client accepts.)
"""

from __future__ import annotations

import mimetypes
import re
from email.utils import formatdate, parsedate_to_datetime

__all__ = [
    "SNIFF_BYTES",
    "ByteRange",
    "RangeMissesFile",
    "last_modified",
    "not_modified",
    "sniffed_type",
    "type_by_name",
    "wanted_range",
]

SNIFF_BYTES = 512  # what Go's DetectContentType looks at
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Go's "binary data bytes" (net/http sniff.go): text has none of them.
_BINARY = frozenset(
    set(range(0x00, 0x09)) | {0x0B} | set(range(0x0E, 0x1B)) | set(range(0x1C, 0x20))
)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b\x08", "application/x-gzip"),
)
# Go's HTML signatures, each followed by a space or '>'.
_HTML_STARTS = tuple(
    tag.encode()
    for tag in (
        "<!doctype html", "<html", "<head", "<script", "<iframe", "<h1", "<div", "<font",
        "<table", "<a", "<style", "<title", "<b", "<body", "<br", "<p", "<!--",
    )
)  # fmt: skip


class RangeMissesFile(ValueError):
    """The ``Range`` asked for starts past the file's end (HTTP 416)."""


class ByteRange:
    """Bytes ``start`` to ``end`` (inclusive) of a file of ``total`` bytes."""

    def __init__(self, start: int, end: int, total: int) -> None:
        self.start, self.end, self.total = start, end, total

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def header(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.total}"


def wanted_range(header: str | None, total: int) -> ByteRange | None:
    """The one range a ``Range`` header asks of a file of ``total`` bytes; None to send it
    all (no header, a form not understood, or several ranges); RangeMissesFile when it
    misses."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = int(last)
        if count == 0 or total == 0:
            raise RangeMissesFile(header)
        return ByteRange(max(0, total - count), total - 1, total)
    start = int(first)
    if start >= total:
        raise RangeMissesFile(header)
    end = min(int(last), total - 1) if last else total - 1
    if end < start:
        return None
    return ByteRange(start, end, total)


def last_modified(mtime_ns: int) -> str:
    return formatdate(mtime_ns // 1_000_000_000, usegmt=True)


def not_modified(if_modified_since: str | None, mtime_ns: int) -> bool:
    """Whether ``If-Modified-Since`` says the client's copy is current (seconds, as HTTP)."""
    if not if_modified_since:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    return mtime_ns // 1_000_000_000 <= int(since.timestamp())


def type_by_name(path: str) -> str | None:
    """The type of the path's extension (text types in UTF-8, as Go's mime package)."""
    guessed, _ = mimetypes.guess_type(path, strict=True)
    if guessed is None:
        return None
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


def sniffed_type(head: bytes) -> str:
    """The type of a file whose first bytes are ``head``, as Go's DetectContentType finds
    the common ones."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    lowered = head.lstrip(b"\t\n\x0c\r ").lower()
    for start in _HTML_STARTS:
        if lowered.startswith(start) and lowered[len(start) : len(start) + 1] in (b" ", b">"):
            return "text/html; charset=utf-8"
    if any(byte in _BINARY for byte in head[:SNIFF_BYTES]):
        return "application/octet-stream"
    return "text/plain; charset=utf-8"
