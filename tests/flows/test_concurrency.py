"""Two reindex runs of one domain at once: exactly one publishes, the other waits and exits cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sidestep.config import SAMPLES_DIR
from sidestep.storage.artifacts import IndexStore

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_two_concurrent_reindex_runs_publish_exactly_once(data_root, tmp_path):
    # the sample handbook (and its ranker budget) without document maps: what the two runs race for is the publish
    config = tmp_path / "handbook.toml"
    config.write_text(f'[maps]\nenabled = false\n\n[[sources]]\ndomain = "handbook"\n'
                      f'path = "{SAMPLES_DIR / "handbook"}"\nformat = "beir"\n\n[verify]\nranker_queries = 40\n')
    procs = []
    for i in range(2):
        env = {**os.environ, "SIDESTEP_HOME": str(data_root.root), "PREFECT_HOME": str(tmp_path / f"prefect{i}"),
               "SIDESTEP_CONFIG": str(config)}
        procs.append(subprocess.Popen([sys.executable, "-m", "sidestep", "reindex", "--domain", "handbook",
                                       "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    published = [r["domains"]["handbook"]["index"]["published"] for r in results]
    assert sorted(published) == [False, True], results
    loser = next(r for r in results if not r["domains"]["handbook"]["index"]["published"])
    assert loser["domains"]["handbook"]["index"]["reason"] in {"published concurrently by another run",
                                                             "unchanged corpus and parameters"}
    store = IndexStore(data_root)
    assert len(store.versions("handbook")) == 1
    assert store.current("handbook") == loser["domains"]["handbook"]["index"]["version"]
