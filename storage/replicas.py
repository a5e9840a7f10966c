"""What each serving replica serves, recorded under the data root so that GC never deletes a version a
replica still has loaded (also one on another node of a shared file system).

Each replica writes `replicas/<id>.json` (atomically) on every reload poll: its versions per kind and
domain, when it wrote, and a time to live. A record older than its TTL belongs to a replica that
crashed or was killed (a stopping replica removes its own); GC ignores it and housekeeping deletes it."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text
from .paths import DataRoot

DEFAULT_TTL_S = 60.0


def replicas_dir(root: DataRoot) -> Path:
    return root.root / "replicas"


def new_replica_id(role: str) -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40] or "host"
    return f"{role}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Heartbeat:
    replica: str
    serving: dict[str, dict[str, str]]  # kind ("indexes", "tables", "verifiers") -> domain -> version
    written_at: float = field(default_factory=time.time)
    ttl_s: float = DEFAULT_TTL_S
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) > self.written_at + self.ttl_s

    def as_dict(self) -> dict:
        return {"replica": self.replica, "serving": self.serving, "written_at": self.written_at,
                "ttl_s": self.ttl_s, "pid": self.pid, "host": self.host}


def write_heartbeat(root: DataRoot, beat: Heartbeat) -> Path:
    d = replicas_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{beat.replica}.json"
    write_text(path, json.dumps(beat.as_dict(), sort_keys=True))
    return path


def remove_heartbeat(root: DataRoot, replica: str) -> None:
    (replicas_dir(root) / f"{replica}.json").unlink(missing_ok=True)


def read_heartbeats(root: DataRoot) -> list[tuple[Path, Heartbeat | None]]:
    """Every record with its file; None for one that cannot be read (a torn or foreign file)."""
    d = replicas_dir(root)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            raw = json.loads(p.read_text())
            out.append((p, Heartbeat(replica=str(raw["replica"]), serving=dict(raw.get("serving") or {}),
                                     written_at=float(raw["written_at"]), ttl_s=float(raw.get("ttl_s", DEFAULT_TTL_S)),
                                     pid=int(raw.get("pid", 0)), host=str(raw.get("host", "")))))
        except (OSError, ValueError, KeyError, TypeError):
            out.append((p, None))
    return out


def served_versions(root: DataRoot, kind: str, domain: str, now: float | None = None) -> set[str]:
    """Versions of `kind`/`domain` some live replica (heartbeat within its TTL) serves."""
    out = set()
    for _, beat in read_heartbeats(root):
        if beat is not None and not beat.expired(now):
            v = (beat.serving.get(kind) or {}).get(domain)
            if v:
                out.add(v)
    return out
