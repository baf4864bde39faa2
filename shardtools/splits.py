"""Assign a split to a group key: a pure function of the key, the salt and the fractions.

No random state and no dependence on input order, so the same input built twice, on any
machine, gives the same assignment, and all photos of one observation share a split.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def split_for(group_key: str, salt: str, fractions: dict[str, float]) -> str:
    """The split whose cumulative interval holds this key's hash position in [0, 1).

    Splits are laid out in the order the config lists them, so reordering the config's
    splits changes assignments; changing the salt reshuffles everything on purpose.
    """
    digest = hashlib.sha256(f"{salt}\x00{group_key}".encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / _SCALE
    cumulative = 0.0
    last_nonzero = None
    for name, fraction in fractions.items():
        if fraction <= 0:
            continue
        last_nonzero = name
        cumulative += fraction
        if position < cumulative:
            return name
    # Rounding can leave the top of [0, 1) uncovered by a hair; it belongs to the last split.
    return last_nonzero
