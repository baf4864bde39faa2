"""The download cache: one file per URL named md5(url).jpg, the layout users already have.

Existing files are read as they are (whatever their real format; the name is only a key).
New files are written atomically (temporary name, then rename), so a reader never sees a
half-written image. Files found broken are moved aside so the next build downloads again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from . import crashpoints
from .atomic import TEMP_MARK

logger = logging.getLogger(__name__)


def url_key(url: str) -> str:
    """md5 of the URL as 32 lowercase hex digits: the cache file stem and the sample key."""
    return hashlib.md5(url.encode("utf-8")).hexdigest()


class ImageCache:
    """Thread-safe: every method works on one file and shares no state but counters.

    Trouble with one cache file never stops a build: a file that cannot be read is a cache
    miss (the URL is downloaded), one that cannot be written is a warning (the image still
    reaches its shard, it is just not cached). Both are counted.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        # A misspelt cache_dir would silently mean downloading everything again: a day of
        # requests to a rate-limited host. Say so loudly.
        self.created = not self.folder.exists()
        if self.created:
            logger.warning("cache folder %s does not exist: creating it, so every image will be "
                           "downloaded. If your images are cached elsewhere, fix build.cache_dir",
                           self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._folder = str(self.folder)
        self.read_errors = 0
        self.write_errors = 0

    def path_for(self, url: str) -> Path:
        return Path(self.file_for(url))

    def file_for(self, url: str) -> str:
        # Plain strings, not Path objects: pathlib interns every name it parses, which for
        # a million cache files is a million strings held for the life of the process.
        return os.path.join(self._folder, f"{url_key(url)}.jpg")

    def read(self, url: str) -> bytes | None:
        path = self.file_for(url)
        try:
            with open(path, "rb") as stream:
                return stream.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.note_read_error(path, exc.strerror or str(exc))
            return None

    def note_read_error(self, path: str, problem: str) -> None:
        """Count (and, the first few times, log) a cache file that exists but cannot be
        read; the caller downloads the URL instead."""
        self.read_errors += 1
        _warn_limited(self.read_errors, "cannot read cache file %s (%s); downloading it "
                      "instead", path, problem)

    def store(self, url: str, data: bytes) -> None:
        # No fsync per image: a cache file lost or cut by a power failure is caught by the
        # image check on the next read and downloaded again.
        path = self.file_for(url)
        temp = f"{path}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}"
        try:
            try:
                with open(temp, "wb") as stream:
                    stream.write(data)
                crashpoints.reach(f"{os.path.basename(path)}:synced")
                os.replace(temp, path)
            except BaseException:
                if os.path.lexists(temp):
                    os.unlink(temp)
                raise
        except OSError as exc:
            self.write_errors += 1
            _warn_limited(self.write_errors, "cannot write cache file %s (%s); the image is "
                          "still written to its shard", self.file_for(url), exc.strerror or exc)

    def set_aside(self, url: str, reason: str) -> None:
        """Rename a broken cache file to `<md5>.jpg.<reason>` so it is fetched anew next time
        but kept for a user who wants to look at it."""
        path = self.file_for(url)
        try:
            os.replace(path, f"{path}.{reason}")
            logger.info("cache file %s is %s; set aside, it will be downloaded again",
                        os.path.basename(path), reason)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.write_errors += 1
            _warn_limited(self.write_errors, "cannot set aside broken cache file %s (%s)", path,
                          exc.strerror or exc)


_WARN_FIRST = 10


def _warn_limited(count: int, message: str, *args) -> None:
    """The first few warnings of a kind in full, then one saying the rest are only counted."""
    if count <= _WARN_FIRST:
        logger.warning(message, *args)
    if count == _WARN_FIRST:
        logger.warning("further cache trouble of this kind is counted in the build summary only")
