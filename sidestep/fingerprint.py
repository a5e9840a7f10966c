"""One content fingerprint for every published artifact: sha256 over canonical JSON, then streams.

Equal fingerprints mean nothing to publish. Each artifact passes what its content depends on:
`params` (settings, versions, names) as JSON with sorted keys, then `streams` of strings or bytes
(document hashes, interaction rows) fed in order, without separators (each item carries its own).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any


def digest(params: Any = None, *streams: Iterable[str | bytes], length: int | None = None) -> str:
    """Hex sha256 of `params` as JSON (sorted keys, non-JSON values as str; left out when None), followed
    by every item of each stream (str encoded as UTF-8); the first `length` hex digits when given."""
    h = hashlib.sha256()
    if params is not None:
        h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for stream in streams:
        for item in stream:
            h.update(item if isinstance(item, bytes) else item.encode())
    out = h.hexdigest()
    return out[:length] if length is not None else out
