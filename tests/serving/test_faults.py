"""Fault: the disk fills up during a publish. The data root is copied onto a small tmpfs (mounted in a
private mount namespace, so nothing leaks), a filler file leaves less room than a version needs, and the
publish must fail without a partial version becoming current; with the space back it succeeds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, shutil, subprocess, sys, tempfile
    from pathlib import Path
    from sidestep.config import default_settings
    from sidestep.storage.artifacts import IndexStore
    from sidestep.storage.indexes import load_version
    from sidestep.storage.paths import DataRoot
    from sidestep.pipeline.index import publish_domain

    src, room_fraction = Path(sys.argv[1]), float(sys.argv[2])
    mnt = Path(tempfile.mkdtemp(prefix="full-", dir="/tmp"))
    used = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used + 32 * 2**20}", "tmpfs", str(mnt)], check=True)
    shutil.copytree(src, mnt / "data", ignore=shutil.ignore_patterns("ray", "prefect"))  # sockets, servers
    store = IndexStore(DataRoot(mnt / "data"))
    before = store.current("handbook")
    need = sum(f.stat().st_size for f in store.path("handbook", before).iterdir())
    with open(mnt / "filler", "wb") as f:
        left = shutil.disk_usage(mnt).free - int(room_fraction * need)
        while left > 0:
            n = min(left, 2**20)
            f.write(bytes(n))
            left -= n
    s = default_settings()
    out = {"need": need}
    try:
        publish_domain(DataRoot(mnt / "data"), s, "handbook", force=True)
        out["full"] = "published"
    except Exception as e:
        out["full"] = f"{type(e).__name__}: {e}"[:200]
    out["current_unchanged"] = store.current("handbook") == before
    out["versions"] = store.versions("handbook")
    out["staging"] = len(list(store.base("handbook").glob(".staging-*")))
    out["loads"] = load_version(store, "handbook", store.current("handbook")).version
    (mnt / "filler").unlink()
    out["after"] = publish_domain(DataRoot(mnt / "data"), s, "handbook", force=True)["version"]
    out["current_after"] = store.current("handbook")
    load_version(store, "handbook", out["current_after"])
    print(json.dumps(out))
""")


@pytest.mark.parametrize("room", [0.1, 0.6])
def test_a_full_disk_during_publish_leaves_the_old_version_current(sample, room):
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare, "-rm", "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs "$d"'],
                           capture_output=True, text=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs in a private namespace here (needs unshare and user namespaces): "
                    f"{probe.stderr.strip()[-200:] if probe else 'no unshare(1)'}")
    p = subprocess.run([unshare, "-rm", sys.executable, "-c", SCRIPT, str(sample.root.root), str(room)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["full"] != "published", out  # there was no room for the version
    assert "no space left on device" in out["full"].lower(), out["full"]
    assert out["current_unchanged"] and out["staging"] == 0, out
    before = out["loads"]
    assert out["versions"][-1] == before  # no new, partial version folder either
    assert out["after"] == out["current_after"] != before  # space back: the publish goes through
