"""Immutable, versioned index artifacts and the atomic CURRENT pointer per domain.

Publishing: build into a hidden staging folder, fsync, write the manifest with
checksums, rename the folder to its version name, verify it by re-reading,
then os.replace the CURRENT pointer. A crash at any point leaves CURRENT naming
the last complete version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from sidestep.config import check_name

from .atomic import fault_point, fsync_dir, fsync_file, sha256_file, write_text
from .paths import SHARED, DataRoot, invalid_entries, valid_domains

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1


class CorruptArtifact(RuntimeError):
    """A version folder whose files do not match its manifest."""


class PublishBusy(RuntimeError):
    """Another process holds the domain's publish lock."""


def new_version_name(fingerprint: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S%f")[:-3]
    return f"v{stamp}-{fingerprint[:8]}"


class IndexStore:
    """Versions of one artifact kind: search indexes (the default), lookup tables, or codebooks."""

    def __init__(self, root: DataRoot, kind: str = "indexes"):
        self.root = root
        self.kind = kind

    def base(self, domain: str) -> Path:
        return self.root.artifact_base(self.kind, domain)

    # reading -----------------------------------------------------------------
    def current(self, domain: str) -> str | None:
        p = self.base(domain) / "CURRENT"
        try:
            name = p.read_text().strip()
        except FileNotFoundError:
            return None
        return check_name(name, "version") if name else None

    def domains(self) -> list[str]:
        """Domains of this kind with a CURRENT pointer (not for the shared codebooks)."""
        if self.kind == "codebooks":
            return []
        return valid_domains(self.root.root / self.kind)

    def invalid_entries(self) -> dict[str, str]:
        """Entries of this kind's folder that are no valid domain (reported by /healthz, never loaded)."""
        return {} if self.kind == "codebooks" else invalid_entries(self.root.root / self.kind)

    def versions(self, domain: str) -> list[str]:
        """Complete versions (a manifest is the last file written), oldest first."""
        base = self.base(domain)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and (p / MANIFEST).is_file())

    def path(self, domain: str, version: str) -> Path:
        return self.base(domain) / check_name(version, "version")

    def manifest(self, domain: str, version: str) -> dict:
        return json.loads((self.path(domain, version) / MANIFEST).read_text())

    def current_manifest(self, domain: str) -> dict | None:
        v = self.current(domain)
        return self.manifest(domain, v) if v else None

    def verify(self, domain: str, version: str) -> dict:
        """Re-read every file and compare sizes and sha256 with the manifest."""
        folder = self.path(domain, version)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise CorruptArtifact(f"{domain}/{version}: unreadable manifest ({e})") from e
        for name, meta in manifest.get("files", {}).items():
            f = folder / name
            if not f.is_file():
                raise CorruptArtifact(f"{domain}/{version}: missing file {name}")
            if f.stat().st_size != meta["bytes"] or sha256_file(f) != meta["sha256"]:
                raise CorruptArtifact(f"{domain}/{version}: checksum mismatch for {name}")
        return manifest

    # writing -----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, domain: str, wait: bool = True) -> Iterator[None]:
        """One publisher per domain at a time (an flock, released if the process dies)."""
        p = self.root.lock(domain, self.kind)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as e:
                raise PublishBusy(f"another process is publishing domain {domain!r}") from e
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def staging(self, domain: str) -> Iterator[Path]:
        """A hidden folder to build a version in; removed if the build fails."""
        base = self.base(domain)
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".staging-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, domain: str, staged: Path, version: str, manifest: dict,
                validate: Callable[[Path, dict], None] | None = None) -> dict:
        """Seal a staged folder as `version` and point CURRENT at it. `validate(folder, manifest)` is the
        last gate before CURRENT moves (an index's counts and golden queries); if it raises, the sealed
        folder is removed and CURRENT stays where it was."""
        check_name(version, "version")
        files = {}
        for f in sorted(staged.iterdir()):
            if f.is_file() and f.name != MANIFEST:
                fsync_file(f)
                files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        manifest = {
            **manifest,
            "schema": MANIFEST_SCHEMA,
            "domain": domain,
            "version": version,
            "parent": self.current(domain),
            "created_at": datetime.now(UTC).isoformat(),
            "files": files,
        }
        write_text(staged / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        fsync_dir(staged)
        fault_point("publish:staged")
        final = self.path(domain, version)
        if final.exists():
            raise FileExistsError(f"version {domain}/{version} already exists; published versions are immutable")
        os.rename(staged, final)
        fsync_dir(final.parent)
        fault_point("publish:renamed")
        self.verify(domain, version)
        if validate is not None:
            try:
                validate(final, manifest)
            except Exception:
                (final / MANIFEST).unlink(missing_ok=True)  # incomplete from here on: never loaded
                shutil.rmtree(final, ignore_errors=True)
                raise
        self.set_current(domain, version)
        fault_point("publish:pointed")
        return manifest

    def set_current(self, domain: str, version: str) -> None:
        """Verify, then atomically repoint CURRENT (also the rollback primitive)."""
        self.verify(domain, version)
        write_text(self.base(domain) / "CURRENT", version + "\n")

    def rollback(self, domain: str, to: str | None = None, pin: bool = True) -> tuple[str | None, str]:
        """Point CURRENT at `to`, or at the version published before the current one, and (by default) pin
        the domain there, so that the next nightly does not publish over it (storage/pins.py). Returns
        (old, new)."""
        with self.lock(domain):
            now = self.current(domain)
            versions = self.versions(domain)
            if to is None:
                older = [v for v in versions if now is None or v < now]
                if not older:
                    raise ValueError(f"{domain}: no version older than {now} to roll back to")
                to = older[-1]
            if to not in versions:
                raise ValueError(f"{domain}: no complete version {to!r}; have {versions}")
            self.set_current(domain, to)
            if pin:
                from .pins import write_pin

                write_pin(self, domain, to, reason="rollback", previous=now)
            return now, to

    def protected(self, domain: str) -> dict[str, str]:
        """Versions GC must keep, with why: CURRENT, the pinned one, and every version a live replica
        reports serving (storage/replicas.py; a crashed replica's record expires after its TTL)."""
        from .pins import read_pin
        from .replicas import served_versions

        out: dict[str, str] = {}
        for v in sorted(served_versions(self.root, self.kind, domain)):
            out[v] = "served by a replica"
        pin = read_pin(self, domain)
        if pin and pin.get("version"):
            out[pin["version"]] = "pinned"
        try:
            current = self.current(domain)
        except ValueError:
            current = None
        if current:
            out[current] = "current"
        return out

    def gc(self, domain: str, keep: int, protect: set[str] | None = None) -> list[str]:
        """Delete all but the newest `keep` versions; never the one CURRENT names, the pinned one, one any
        live replica serves (`protected`), nor any in `protect`."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        with self.lock(domain):
            keepers = set(self.protected(domain)) | (protect or set())
            versions = self.versions(domain)
            doomed = [v for v in versions[:-keep] if v not in keepers]
            for v in doomed:
                folder = self.path(domain, v)
                (folder / MANIFEST).unlink(missing_ok=True)  # incomplete from here on: never loaded again
                shutil.rmtree(folder, ignore_errors=True)
            return doomed

    def clean_staging(self, domain: str) -> int:
        """Remove staging folders left by crashed publishes; call it holding the domain's lock."""
        n = 0
        base = self.base(domain)
        if base.is_dir():
            for d in base.glob(".staging-*"):
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n

    def sweep_staging(self) -> int:
        """clean_staging for every domain no publisher holds now (a crashed run's leftovers in a domain
        the next run has nothing to publish for would otherwise stay)."""
        n = 0
        base = self.root.root / self.kind
        if self.kind == "codebooks":
            domains = [SHARED] if base.is_dir() else []
        else:  # every folder, also a domain whose first publish was killed (no CURRENT yet)
            domains = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        for domain in domains:
            try:
                check_name(domain)
            except ValueError:  # not a domain folder (lost+found, a stray copy): not ours to touch
                continue
            try:
                with self.lock(domain, wait=False):
                    n += self.clean_staging(domain)
            except PublishBusy:
                continue
        return n
