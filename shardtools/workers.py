"""Where decode, resize and encode run: in the calling thread, or in worker processes.

Pillow releases the GIL in its codecs and resampling, so threads already overlap much of
the work; processes (`image.processes > 0`) take the rest of the Python overhead off the
main interpreter for CPU-bound builds from a full cache.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from .imaging.check import ProcessedImage, process_image
from .settings import ImageSettings

logger = logging.getLogger(__name__)


class ImageWorkers:
    def __init__(self, settings: ImageSettings):
        self.settings = settings
        self._pool = None
        processes = settings.processes
        if processes is None:
            processes = os.cpu_count() or 1
            logger.info("decoding images in %d worker processes (one per core; set "
                        "image.processes to change)", processes)
        if processes > 0:
            # spawn, not fork: the build holds threads and sockets that a fork would copy.
            self._pool = ProcessPoolExecutor(processes,
                                             mp_context=multiprocessing.get_context("spawn"))

    def process(self, data: bytes) -> ProcessedImage:
        """Check and re-encode one image; raises ImageRejected. Safe from many threads."""
        if self._pool is None:
            return process_image(data, self.settings)
        return self._pool.submit(process_image, data, self.settings).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
