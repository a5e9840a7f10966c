"""sidestep: pure logic (encoder, chunking, readers, indexes, search, metrics).

Importable in a notebook; imports neither prefect nor ray.
"""

from __future__ import annotations

__version__ = "0.1.0"
