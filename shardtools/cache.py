"""The download cache: one file per URL named md5(url).jpg, the layout users already have.

Existing files are read as they are (whatever their real format; the name is only a key).
New files are written atomically (temporary name, then rename), so a reader never sees a
half-written image. Files found broken are moved aside so the next build downloads again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .atomic import atomic_writer

logger = logging.getLogger(__name__)


def url_key(url: str) -> str:
    """md5 of the URL as 32 lowercase hex digits: the cache file stem and the sample key."""
    return hashlib.md5(url.encode("utf-8")).hexdigest()


class ImageCache:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, url: str) -> Path:
        return self.folder / f"{url_key(url)}.jpg"

    def read(self, url: str) -> bytes | None:
        try:
            return self.path_for(url).read_bytes()
        except FileNotFoundError:
            return None

    def store(self, url: str, data: bytes) -> None:
        # No fsync per image: a cache file lost or cut by a power failure is caught by the
        # image check on the next read and downloaded again.
        with atomic_writer(self.path_for(url), "wb", durable=False) as stream:
            stream.write(data)

    def set_aside(self, url: str, reason: str) -> None:
        """Rename a broken cache file to `<md5>.jpg.<reason>` so it is fetched anew next time
        but kept for a user who wants to look at it."""
        path = self.path_for(url)
        try:
            os.replace(path, path.with_name(f"{path.name}.{reason}"))
            logger.info("cache file %s is %s; set aside, it will be downloaded again", path.name, reason)
        except FileNotFoundError:
            pass
