"""Read samples out of one tar shard, keeping only the members the loader knows.

A small reader of our own rather than `tarfile`: it knows the byte offset of every header,
so a damaged shard can be reported as "name at byte N", and it skips unknown members
without reading them into memory (nothing is ever unpickled: only bytes are returned).
It understands ustar headers, pax and GNU long names, and stops at the first header that
fails its checksum, because past that point nothing in a stream is trustworthy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

_BLOCK = 512
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
KNOWN_MEMBERS = IMAGE_MEMBERS + ("cls", "json")


class DamagedShard(Exception):
    def __init__(self, offset: int, reason: str):
        super().__init__(f"at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass
class ReadReport:
    """What happened while reading a shard; filled as the generator runs."""
    complete: int = 0
    incomplete: list = field(default_factory=list)   # keys missing an image or a class
    damage: DamagedShard | None = None
    offset: int = 0                                   # bytes consumed so far


def open_shard(path: str):
    """A readable binary stream: a local file, or any URL WebDataset knows (s3, http, pipe:)."""
    if "://" in path or path.startswith("pipe:"):
        from webdataset.gopen import gopen  # only for remote shards; local reads stay plain

        return gopen(path, "rb")
    return open(path, "rb", buffering=1 << 16)  # members are small: fewer, larger reads


def read_samples(stream, report: ReadReport):
    """Yield {"__key__", "image", "cls"[, "json"]} per complete sample, in shard order."""
    key, members = None, {}
    for member_key, extension, data in _members(stream, report):
        if member_key != key:
            if key is not None:
                yield from _finish(key, members, report)
            key, members = member_key, {}
        members["image" if extension in IMAGE_MEMBERS else extension] = data
    if key is not None:
        yield from _finish(key, members, report)


def _finish(key, members, report):
    if "image" in members and "cls" in members:
        report.complete += 1
        yield {"__key__": key, **members}
    else:
        report.incomplete.append(key)


def _split_name(name: str) -> tuple[str, str]:
    """(key, lower-case extension): "dir/abc.cls" -> ("dir/abc", "cls"); no dot: ext ""."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


def _members(stream, report: ReadReport):
    """(key, extension, bytes) of regular-file members whose extension is known; others
    skipped unread. The loop runs once per member of every shard, so it is kept flat."""
    read = stream.read
    long_name = None
    pax_name = None
    known = KNOWN_MEMBERS
    while True:
        header_at = report.offset
        header = read(_BLOCK)
        if len(header) != _BLOCK:
            header += _read_exactly(stream, _BLOCK - len(header)) if header else b""
            if len(header) == 0:
                report.damage = DamagedShard(header_at, "data ends without the end-of-archive blocks")
                return
            if len(header) < _BLOCK:
                report.damage = DamagedShard(header_at, "cut inside a tar header")
                return
        if header == _ZERO_BLOCK:
            return
        report.offset += _BLOCK
        try:
            name, size, kind = _parse_header(header)
        except ValueError as exc:
            report.damage = DamagedShard(header_at, str(exc))
            return
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if kind in _REGULAR:
            key, extension = _split_name(long_name or pax_name or name)
            wanted = extension in known
        else:
            wanted = kind in _NAME_RECORDS
        if wanted:
            # One read for the data and its padding; the slice copies only the data.
            block = read(padded)
            if len(block) < padded:
                block += _read_exactly(stream, padded - len(block))
            if len(block) < size:
                report.damage = DamagedShard(header_at, f"member {name!r} cut after "
                                             f"{len(block)} of {size} bytes")
                return
            data = block[:size] if padded != size else block
        else:
            skipped = _skip(stream, padded)
            if skipped < padded:
                report.damage = DamagedShard(header_at, f"member {name!r} cut short")
                return
        report.offset += padded
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8", "replace")
            continue
        if kind == b"x":
            pax_name = _pax_path(data)
            continue
        long_name = pax_name = None
        if wanted:
            yield key, extension, data


_ZERO_BLOCK = b"\0" * _BLOCK
_REGULAR = (b"0", b"\0", b"7")
_NAME_RECORDS = (b"x", b"L")  # pax extended header, GNU long name: read for the next name


def _parse_header(header: bytes) -> tuple[str, int, bytes]:
    stored = _octal(header[148:156], "checksum")
    # The checksum counts its own 8 bytes as spaces; one sum over the block is cheaper
    # than summing the two slices around them.
    actual = sum(header) - sum(header[148:156]) + 8 * 32
    if stored != actual:
        raise ValueError("tar header checksum mismatch (not a tar, or damaged)")
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    size_field = header[124:136]
    if size_field[0] & 0x80:  # GNU base-256 for members over 8 GiB
        size = int.from_bytes(size_field[1:], "big")
    else:
        size = _octal(size_field, "size")
    return name.decode("utf-8", "replace"), size, header[156:157]


def _octal(field_bytes: bytes, what: str) -> int:
    text = field_bytes.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ValueError(f"tar header has a bad {what} field {text[:12]!r}") from None


def _pax_path(data: bytes) -> str | None:
    # Records are "<length> key=value\n".
    for line in data.split(b"\n"):
        _, _, record = line.partition(b" ")
        key, eq, value = record.partition(b"=")
        if eq and key == b"path":
            return value.decode("utf-8", "replace")
    return None


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:  # pipes and sockets may return short reads
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _skip(stream, size: int) -> int:
    """Skip `size` bytes; returns how many were really there."""
    if size <= 1 << 16 or not stream.seekable():
        # Padding and small members: reading keeps the buffered stream's buffer.
        return len(_read_exactly(stream, size)) if size else 0
    here = stream.tell()
    end = stream.seek(0, os.SEEK_END)  # any seekable stream, with a file number or not
    stream.seek(min(here + size, end))
    return min(size, end - here)
