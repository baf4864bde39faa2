"""Read input records (JSONL or CSV) into one record type; bad lines become RecordErrors.

A record is one line of input. Many records may name the same URL; `samples.py` collapses
them into one sample each.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import RecordError, RecordsChangedError

logger = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("http", "https")


@dataclass(frozen=True, slots=True)
class Record:
    source: str          # the records file, as named in the config
    line_number: int     # 1-based; for CSV the header is line 1
    url: str
    label: str           # labels are compared as text: 123 and "123" are one class
    group: str | None    # the group field's value, None when absent
    extra: dict          # the record's other fields, kept as sample metadata

    @property
    def record_id(self) -> str:
        return f"{self.source}:{self.line_number}"


class InputSnapshot:
    """What the records files held when a build began: their sizes and a hash of those
    bytes. A build reads its input several times; every pass reads exactly these bytes, so
    lines appended meanwhile wait for the next build, and a file rewritten meanwhile stops
    the build with a clear error instead of giving records no fate."""

    def __init__(self, paths):
        self.sizes: dict[str, int] = {}
        self.digests: dict[str, str] = {}
        for path in paths:
            path = str(Path(path))
            size = os.path.getsize(path)
            self.sizes[path] = size
            self.digests[path] = _prefix_digest(path, size)

    def check(self) -> None:
        for path, size in self.sizes.items():
            try:
                unchanged = os.path.getsize(path) >= size and _prefix_digest(path, size) == self.digests[path]
            except OSError:
                unchanged = False
            if not unchanged:
                raise RecordsChangedError(
                    f"{path} changed while the build read it (rewritten, cut or removed, not "
                    "only appended to). Nothing half-done was listed; run the build again "
                    "once the file is complete")


def _prefix_digest(path: str, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        remaining = size
        while remaining:
            block = stream.read(min(remaining, 1 << 20))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def read_records(paths, url_field: str, label_field: str, group_field: str | None,
                 snapshot: InputSnapshot | None = None) -> Iterator[Record | RecordError]:
    """Yield a Record per good line and a RecordError per bad one, in input order.

    Whatever a line holds, it costs that line only: every failure to make a record out of
    it becomes a RecordError with its file and line number. With a snapshot, only the
    bytes it saw are read.
    """
    for path in paths:
        path = Path(path)
        source = str(path)
        limit = snapshot.sizes[source] if snapshot is not None else None
        rows = _csv_rows(path, limit) if path.suffix.lower() == ".csv" else _jsonl_rows(path, limit)
        for line_number, row in rows:
            if isinstance(row, RecordError):
                yield row
                continue
            try:
                yield _to_record(source, line_number, row, url_field, label_field, group_field)
            except RecordError as exc:
                yield exc
            except (ValueError, TypeError, UnicodeError) as exc:  # Defensive: odd content
                yield RecordError(source, line_number, f"unusable record ({exc})")


def _limited(path: Path, limit: int | None):
    """The file as a binary stream that ends after `limit` bytes (None: at its end)."""
    stream = open(path, "rb")
    if limit is None:
        return stream
    data = _LimitedReader(stream, limit)
    return io.BufferedReader(data, buffer_size=1 << 16)


class _LimitedReader(io.RawIOBase):
    def __init__(self, stream, limit: int):
        self._stream = stream
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: self._left]
        count = self._stream.readinto(view)
        self._left -= count
        return count

    def close(self) -> None:
        self._stream.close()
        super().close()


def _jsonl_rows(path: Path, limit: int | None = None):
    # Bytes, then decode per line: one bad byte sequence costs one line, not the file.
    with _limited(path, limit) as stream:
        for line_number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield line_number, RecordError(str(path), line_number, "not valid UTF-8")
                continue
            except json.JSONDecodeError as exc:
                yield line_number, RecordError(str(path), line_number,
                                               f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            except ValueError as exc:  # e.g. an integer past Python's digit limit
                yield line_number, RecordError(str(path), line_number, f"not usable JSON ({exc})")
                continue
            if not isinstance(row, dict):
                yield line_number, RecordError(str(path), line_number,
                                               f"expected a JSON object, got {type(row).__name__}")
                continue
            yield line_number, row


def _csv_rows(path: Path, limit: int | None = None):
    # utf-8-sig: spreadsheet exports often start with a byte-order mark. Undecodable bytes
    # are kept as surrogates so the row they are in, and only that row, is rejected.
    with io.TextIOWrapper(_limited(path, limit), newline="", encoding="utf-8-sig",
                          errors="surrogateescape") as stream:
        reader = csv.DictReader(stream)
        try:
            if reader.fieldnames is None:  # reads the header now, so line_num counts it
                return
        except csv.Error as exc:
            yield 1, RecordError(str(path), 1, f"not valid CSV header ({exc})")
            return
        while True:
            first_line = reader.line_num + 1  # a quoted field may span lines: report the first
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield first_line, RecordError(str(path), first_line, f"not valid CSV ({exc})")
                continue
            if None in row:
                yield first_line, RecordError(str(path), first_line,
                                              "more fields than the header names")
                continue
            yield first_line, row
def _to_record(source: str, line_number: int, row: dict, url_field: str, label_field: str,
               group_field: str | None) -> Record:
    url = row.get(url_field)
    if url is None:
        raise RecordError(source, line_number, f"missing field {url_field!r}")
    if not isinstance(url, str) or not url.strip():
        raise RecordError(source, line_number, f"field {url_field!r} must be a non-empty URL string")
    # The URL is kept as written (the cache is keyed on md5 of exactly this text); the
    # build fetches it without surrounding whitespace.
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError as exc:
        raise RecordError(source, line_number, f"field {url_field!r} is not a valid URL ({exc})") from None
    if scheme not in ALLOWED_SCHEMES:
        raise RecordError(source, line_number,
                          f"field {url_field!r}: only http and https URLs are fetched, got {url[:80]!r}")

    label = row.get(label_field)
    if label is None or label == "":
        raise RecordError(source, line_number, f"missing field {label_field!r}")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        else:
            raise RecordError(source, line_number,
                              f"field {label_field!r} must be text or a whole number, got {label!r}")

    group = None
    if group_field:
        value = row.get(group_field)
        if value is not None and value != "":
            # Scalars as text; a nested value as canonical JSON, so it is stable too.
            group = value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    extra = {k: v for k, v in row.items() if k not in (url_field, label_field)}
    label = str(label)
    for what, text in (("URL", url), ("label", label), ("group", group or ""),
                       ("record", json.dumps(extra, ensure_ascii=False) if extra else "")):
        if not _encodable(text):
            raise RecordError(source, line_number, f"{what} holds text that is not valid "
                              "Unicode (a lone surrogate, e.g. a cut emoji)")
    return Record(source, line_number, url, label, group, extra)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
