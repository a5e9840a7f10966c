"""The data root and every path under it. No other package builds paths.

Layout (DESIGN.md): documents/ (Parquet, partitioned by domain), interactions/,
maps/, embeddings/, codebooks/<version>/, tables/<domain>/<version>/,
indexes/<domain>/<version>/ + indexes/<domain>/CURRENT, quarantine/, runs/, lab/<task>/<domain>/,
eval.duckdb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sidestep.config import Settings, check_name

from .rootcheck import refuse_url

DEFAULT_ROOT = "./var"
SHARED = "shared"
ARTIFACT_KINDS = ("indexes", "tables", "codebooks", "verifiers", "rankers")


def resolve_root(settings: Settings | None = None, override: str | os.PathLike | None = None) -> Path:
    """Explicit override, then $SIDESTEP_HOME, then the config's data_root, then ./var."""
    raw = override or os.environ.get("SIDESTEP_HOME") or (settings.data_root if settings else None) or DEFAULT_ROOT
    refuse_url(raw)  # s3://... is not a data root (storage/rootcheck.py says why)
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class DataRoot:
    root: Path

    @classmethod
    def from_settings(cls, settings: Settings | None = None, override: str | os.PathLike | None = None) -> DataRoot:
        return cls(resolve_root(settings, override))

    def _inside(self, *parts: str) -> Path:
        """Join and refuse anything that escapes the root (names come from requests and configs)."""
        p = self.root.joinpath(*parts).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"path {p} escapes the data root {self.root}")
        return p

    # documents and sources
    def documents(self, domain: str) -> Path:
        return self._inside("documents", f"domain={check_name(domain)}")

    def documents_root(self) -> Path:
        return self._inside("documents")

    def interactions(self, domain: str) -> Path:
        return self._inside("interactions", f"domain={check_name(domain)}")

    def quarantine(self, domain: str) -> Path:
        return self._inside("quarantine", f"domain={check_name(domain)}")

    def quarantine_root(self) -> Path:
        return self._inside("quarantine")

    # versioned artifacts
    def embeddings(self, encoder_key: str) -> Path:
        return self._inside("embeddings", check_name(encoder_key, "encoder key"))

    def maps(self, key: str) -> Path:
        return self._inside("maps", check_name(key, "map key"))

    def indexes(self, domain: str) -> Path:
        return self._inside("indexes", check_name(domain))

    def indexes_root(self) -> Path:
        return self._inside("indexes")

    def index_version(self, domain: str, version: str) -> Path:
        return self._inside("indexes", check_name(domain), check_name(version, "version"))

    def current_pointer(self, domain: str) -> Path:
        return self._inside("indexes", check_name(domain), "CURRENT")

    def lock(self, domain: str, kind: str = "indexes") -> Path:
        name = check_name(domain) if kind == "indexes" else f"{kind}-{check_name(domain)}"
        return self._inside("locks", f"{name}.lock")

    def artifact_base(self, kind: str, domain: str) -> Path:
        """Where versions of one kind live: indexes/<domain>/, tables/<domain>/, codebooks/
        (codebooks are shared by every domain, so their `domain` is only a label and must be "shared")."""
        if kind == "codebooks":
            if domain != SHARED:
                raise ValueError(f"codebooks are shared by all domains; got domain {domain!r}")
            return self._inside("codebooks")
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {', '.join(ARTIFACT_KINDS)}")
        return self._inside(kind, check_name(domain))

    def tables(self, domain: str) -> Path:
        return self._inside("tables", check_name(domain))

    # evaluation
    def eval_db(self) -> Path:
        return self._inside("eval.duckdb")

    def runs(self) -> Path:
        return self._inside("runs")

    def lab(self, task: str, domain: str) -> Path:
        """The gradient lab's cached inputs of one task and domain (lab/<task>/<domain>/)."""
        return self._inside("lab", check_name(task, "lab task"), check_name(domain))

    def last_nightly(self) -> Path:
        return self._inside("runs", "nightly-last.json")

    # local runtimes kept inside the root so that tests and scripts stay self-contained
    def prefect_home(self) -> Path:
        return self._inside("prefect")

    def ray_home(self) -> Path:
        return self._inside("ray", "home")

    def domains_with_indexes(self) -> list[str]:
        """Domains with a CURRENT pointer; a folder whose name is no valid domain (a stray copy such as
        `Handbook-BAK`) is left out here and reported by `invalid_entries`."""
        return valid_domains(self.root / "indexes")

    def domains_with_documents(self) -> list[str]:
        base = self.documents_root()
        if not base.is_dir():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.iterdir() if p.name.startswith("domain="))


def valid_domains(base: Path) -> list[str]:
    """Folders under `base` (one artifact kind) that hold a CURRENT pointer and have a valid domain name."""
    if not base.is_dir():
        return []
    out = []
    for p in base.iterdir():
        if (p / "CURRENT").is_file() and _valid(p.name):
            out.append(p.name)
    return sorted(out)


def invalid_entries(base: Path) -> dict[str, str]:
    """Entries under `base` that are not domains a server can load: {relative path: reason}. Hidden
    entries (staging folders, temporary files) and lost+found are not reported."""
    if not base.is_dir():
        return {}
    out = {}
    for p in sorted(base.iterdir()):
        if p.name.startswith(".") or p.name == "lost+found" or _valid(p.name):
            continue
        what = "folder" if p.is_dir() else "file"
        out[f"{base.name}/{p.name}"] = (f"{what} name {p.name!r} is not a valid domain name (a-z 0-9 . _ -, "
                                        "starting with a letter or digit): ignored; rename or remove it")
    return out


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True
