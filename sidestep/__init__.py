"""sidestep: pure logic (encoder, chunking, readers, indexes, search, metrics).

Importable in a notebook; imports neither prefect nor ray.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# ONNX Runtime (the search replica's query encoder) uploads telemetry from Linux builds too, and writes a
# device id under HOME, unless this is set before it is first imported; nothing here may leave loopback.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
