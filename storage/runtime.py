"""Local runtime environment: keep Prefect and Ray state inside the data root and
keep every byte on loopback.

Call `configure(root)` before importing prefect or ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from .paths import DataRoot

# Ray's unix sockets live under RAY_TMPDIR; their paths must stay under ~107 bytes.
_MAX_RAY_TMP = 40


def ray_tmpdir(root: DataRoot) -> Path:
    p = root.root / "ray" / "tmp"
    if len(str(p)) > _MAX_RAY_TMP:
        p = Path(tempfile.gettempdir()) / f"sidestep-ray-{hashlib.sha1(str(root.root).encode()).hexdigest()[:8]}"
    return p


def ray_home(root: DataRoot) -> Path:
    """A HOME for Ray holding `ray_bootstrap_config.yaml` = {}: without it Ray probes cloud metadata hosts."""
    home = root.ray_home()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "ray_bootstrap_config.yaml"
    if not cfg.is_file():
        cfg.write_text("{}\n")
    return home


def configure(root: DataRoot, *, ray: bool = False, create_home: bool = True) -> dict[str, str]:
    """Set the environment variables that keep the stack local; returns what was set. create_home=False sets
    them without creating Prefect's home (a command that only prints its help writes nothing)."""
    env = {
        "PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(root.prefect_home()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS":
            os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ORT_DISABLE_TELEMETRY": "1",  # ONNX Runtime's telemetry upload and device id (see sidestep/text/encoder.py)
    }
    if ray:
        tmp = ray_tmpdir(root)
        tmp.mkdir(parents=True, exist_ok=True)
        env.update({
            "RAY_TMPDIR": str(tmp),
            "HOME": str(ray_home(root)),
            "RAY_NODE_IP_ADDRESS": "127.0.0.1",
            # Ray "resolves" 127.0.0.1 to the machine's outward address (a UDP connect to 8.8.8.8)
            # unless this single-machine switch is off; with it, every Ray address stays loopback.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_SERVE_HTTP_HOST": "127.0.0.1",
        })
    # a read-only root can still be searched; writing commands refuse it (rootcheck.check_root)
    if create_home:
        with contextlib.suppress(OSError):
            Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    return env
