"""Training side: stream a built dataset's shards into PyTorch, never touching the network."""

from .evaluate import evaluate
from .loader import make_loader
from .normalize import normalize

__all__ = ["make_loader", "evaluate", "normalize"]
