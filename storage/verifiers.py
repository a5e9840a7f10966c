"""Verifier versions: `verifiers/<domain>/<version>/model.pt` (weights + config), published
and verified like index versions, so serving hot-loads and rolls back a verifier the same way."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from sidestep.verify.model import Verifier, VerifierConfig

from .artifacts import IndexStore
from .atomic import write_bytes
from .paths import DataRoot

MODEL_FILE = "model.pt"


def verifier_store(root: DataRoot) -> IndexStore:
    return IndexStore(root, "verifiers")


@dataclass
class LoadedVerifier:
    domain: str
    version: str
    model: Verifier
    manifest: dict


def write_verifier(staged: Path, model: Verifier) -> None:
    buf = io.BytesIO()
    torch.save({"config": model.cfg.as_dict(), "dim": model.dim, "state": model.state_dict()}, buf)
    write_bytes(staged / MODEL_FILE, buf.getvalue())


def publish_verifier(root: DataRoot, domain: str, version: str, model: Verifier, manifest: dict,
                     keep: int) -> dict:
    store = verifier_store(root)
    with store.lock(domain):
        store.clean_staging(domain)
        with store.staging(domain) as staged:
            write_verifier(staged, model)
            out = store.publish(domain, staged, version, manifest)
    store.gc(domain, keep)
    return out


def load_verifier(root: DataRoot, domain: str, version: str | None = None) -> LoadedVerifier | None:
    """The domain's current (or named) verifier, checksums verified; None when none is published."""
    store = verifier_store(root)
    version = version or store.current(domain)
    if version is None:
        return None
    manifest = store.verify(domain, version)
    blob = torch.load(io.BytesIO((store.path(domain, version) / MODEL_FILE).read_bytes()), weights_only=True)
    model = Verifier(VerifierConfig.from_dict(blob["config"]), int(blob["dim"]))
    # versions published before the query adapter existed read as the identity adapter
    model.load_state_dict({"adapter": torch.eye(model.dim), **blob["state"]})
    model.eval()
    return LoadedVerifier(domain, version, model, manifest)
