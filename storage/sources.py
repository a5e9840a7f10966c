"""What was ingested into this data root: the source registry (`sources.json`).

`ingest` records every source it read here, so `reindex --domain D`, the nightly run and `status`
know a domain that no config file names. A TOML config adds its sources to the registry's, never
replaces them; the same (domain, path) declared twice with different settings is a clear error.

The file is rewritten whole (write-temp, fsync, `os.replace`) under an flock, so two ingests that
record at once both land and a crash leaves the previous registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

from sidestep.config import Settings, SourceConfig
from sidestep.storage.atomic import write_text
from sidestep.storage.paths import DataRoot

FILE = "sources.json"
# what makes two declarations of one (domain, path) read the same documents; where they differ only in
# `snapshot` (a command-line ingest defaults to off, a config source to on) or `eval` (a demo marker), the
# config's declaration is the one the nightly run uses
_SAME = ("format", "id_field", "title_field", "text_field")


class SourceConflict(ValueError):
    """One (domain, path) declared with different settings by the config and the data root."""


class SourceRegistry:
    def __init__(self, root: DataRoot):
        self.root = root
        self.path = root.root / FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(FILE + ".lock"), "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def sources(self) -> list[SourceConfig]:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text())
            return [SourceConfig(**s) for s in raw["sources"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path} is not a source registry ({e}); fix or remove it") from e

    def domains(self) -> list[str]:
        return list(dict.fromkeys(s.domain for s in self.sources()))

    def record(self, source: SourceConfig) -> None:
        """Remember SOURCE (replacing an earlier entry for the same domain and path)."""
        entry = source.model_copy(update={"path": _absolute(source.path)})
        with self._locked():
            kept = [s for s in self.sources() if (s.domain, s.path) != (entry.domain, entry.path)]
            body = {"sources": [s.model_dump() for s in [*kept, entry]]}
            write_text(self.path, json.dumps(body, indent=1, sort_keys=True) + "\n")


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def known_sources(settings: Settings, root: DataRoot) -> list[SourceConfig]:
    """The config's sources, then every source recorded in the data root that the config does not declare.

    Raises SourceConflict when both declare one (domain, path) with different settings."""
    mine = {(s.domain, _absolute(s.path)): s for s in settings.sources}
    out = list(settings.sources)
    for s in SourceRegistry(root).sources():
        same = mine.get((s.domain, s.path))
        if same is None:
            out.append(s)
            continue
        diff = {k: (getattr(same, k), getattr(s, k)) for k in _SAME if getattr(same, k) != getattr(s, k)}
        if diff and not (set(diff) == {"format"} and same.format is None):  # an undeclared format was detected
            raise SourceConflict(
                f"source {s.path} of domain {s.domain!r} is declared differently by the config and by the data "
                f"root's {FILE} (config vs data root: {diff}); make them agree, or ingest it again with the "
                f"config's settings")
    return out


def known_domains(settings: Settings, root: DataRoot) -> list[str]:
    return list(dict.fromkeys(s.domain for s in known_sources(settings, root)))


def domains_in(settings: Settings, root: DataRoot) -> list[str]:
    """Every domain this data root knows: the config's, the recorded sources', and any with stored documents
    (a domain `eval` ingested, say), in that order."""
    return list(dict.fromkeys([*known_domains(settings, root), *root.domains_with_documents()]))


def sources_to_read(settings: Settings, root: DataRoot, domain: str) -> tuple[list[SourceConfig], list[str]]:
    """DOMAIN's sources for a nightly run, and the recorded sources skipped because their path is gone.

    A source the config names must be readable (a missing one fails the domain, as before); one that an
    earlier `ingest` recorded but that no longer exists (a file since moved, say) is skipped: the data root
    keeps its documents, and the run says which paths it skipped."""
    configured = {(s.domain, _absolute(s.path)) for s in settings.sources}
    read, gone = [], []
    for s in known_sources(settings, root):
        if s.domain != domain:
            continue
        if (s.domain, _absolute(s.path)) not in configured and "://" not in s.path and not Path(s.path).exists():
            gone.append(s.path)
        else:
            read.append(s)
    return read, gone
