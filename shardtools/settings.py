"""Typed settings for each part of a build; `config.py` fills them from YAML and validates.

Every field has the default a user gets when the key is absent. Durations are seconds,
sizes are bytes, rates are per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Downloads are I/O bound, but each thread holds a connection; past this a build only
# hurts the hosts it asks and the machine it runs on.
MAX_FETCH_THREADS = 1024


@dataclass(frozen=True)
class FetchSettings:
    """How the fetcher talks to image hosts (see `shardtools.fetch`)."""

    threads: int = 16
    # Proactive ceiling per host, shared by all threads; `burst` tokens may be spent at once.
    requests_per_second: float = 5.0
    burst: int = 2
    # Optional second ceiling per host; 0 disables it.
    bytes_per_hour: int = 0
    # Socket connect/read timeout for one request.
    timeout_s: float = 10.0
    # Wall-clock budget for one image, all bytes included: stops servers that trickle.
    image_deadline_s: float = 60.0
    # Cache-only windows after a 429 (or a 503 with Retry-After) that carries no usable
    # Retry-After: the next step each time, the last step repeating.
    backoff_schedule_s: tuple[float, ...] = (60.0, 120.0, 300.0, 600.0)
    # No window, whatever Retry-After says, is longer than this.
    max_backoff_s: float = 600.0
    # Transient faults (timeouts, connection errors, 500/502/503-without-Retry-After/504):
    # retried this many times with exponential backoff and jitter starting at retry_base_s.
    max_retries: int = 3
    retry_base_s: float = 1.0
    max_redirects: int = 5
    max_bytes: int = 32 * 1024 * 1024
    user_agent: str = "shardtools/0.1"
    # Put in the User-Agent so a host's operator can reach whoever runs the build.
    contact: str = ""
    # Each window a host opens multiplies its pace by this (0 < x < 1). After the probe
    # the pace climbs back by requests_per_second / ramp_successes per answer up to a
    # settle point under the pace that drew the 429, then slowly (docs/fetching.md).
    rate_decrease: float = 0.5
    ramp_successes: int = 20
    # While a host's probe is in flight, `Fetcher.next_probe_in` suggests this wait.
    probe_poll_s: float = 1.0


@dataclass(frozen=True)
class ImageSettings:
    """How each image is checked, normalised and re-encoded (see `shardtools.imaging`)."""

    resize: str = "shorter_side"  # shorter_side | longer_side | keep
    size: int = 256
    quality: int = 90
    # Filter for the resize: bilinear | bicubic | lanczos | box (imaging/check.py).
    resample: str = "bilinear"
    # Refused from the header, before any pixel is decoded (decompression bombs).
    max_pixels: int = 64_000_000
    min_side: int = 16
    # An image whose every channel spans at most this many levels is `blank`.
    blank_tolerance: int = 4
    # Keep a baseline RGB JPEG that already fits byte for byte instead of re-encoding.
    passthrough: bool = False
    tolerate_truncation: bool = False
    # Worker processes for decode/resize/encode: None (the default) one per core, 0 in
    # the download threads (measured slower: the GIL and 16 threads contend; fine for
    # tests and tiny builds, where starting processes costs more than it saves).
    processes: int | None = None


@dataclass(frozen=True)
class BuildSettings:
    records: tuple[str, ...]
    output_dir: str
    cache_dir: str
    url_field: str = "image_url"
    label_field: str = "taxon_id"
    group_field: str | None = None
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    split_salt: str = "v1"
    shard_max_samples: int = 1000
    shard_max_bytes: int = 256 * 1024 * 1024
    image: ImageSettings = field(default_factory=ImageSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    # After the first pass, keep retrying pending records until none is left or this many
    # seconds have passed since the build began; 0 stops after one pass.
    drain_deadline_s: float = 0.0


@dataclass(frozen=True)
class TrainSettings:
    dataset: str
    batch_size: int = 64
    num_workers: int = 2
    image_size: int = 224
    max_steps: int = 100
    learning_rate: float = 0.01
    seed: int = 0
    shuffle_buffer: int = 1000


@dataclass(frozen=True)
class Config:
    build: BuildSettings | None
    train: TrainSettings | None
    source: str  # the file it came from, for messages
