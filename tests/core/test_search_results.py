"""SearchResults.ranked_by: the one line the search table's caption and the demo print about what ordered the
hits, built from the response's `verify` and `mode` as the server returns them."""

from __future__ import annotations

from sidestep.results import SearchResults


def _res(verify: dict, mode: str = "chunks") -> SearchResults:
    return SearchResults.from_dict({"results": [], "index_version": "v1", "domain": "d", "mode": mode,
                                    "verify": verify})


def test_ranked_by_names_each_ranker_and_its_reason():
    own = _res({"requested": True, "applied": True, "verifier_version": "v7", "candidates": 100, "verified": 30})
    assert own.ranked_by == "verifier v7 (30 of 100 candidates read)"
    general = _res({"requested": True, "applied": True, "verifier_version": "v8", "candidates": 100,
                    "ranker": "verifier:general-verifier", "reason": "chosen on held-out queries"})
    assert general.ranked_by == ("verifier:general-verifier, verifier v8 (100 of 100 candidates read): "
                                 "chosen on held-out queries")
    for ranker in ("maxsim", "fusion", "pooled_cosine"):
        chosen = _res({"requested": True, "applied": False, "ranker": ranker, "reason": f"{ranker} serves"})
        assert chosen.ranked_by == f"{ranker}: {ranker} serves"
    assert _res({"requested": False, "applied": False}).ranked_by == "recall (pooled cosine)"
    mapped = _res({"requested": True, "applied": False, "reason": "chunk search only"}, mode="map")
    assert mapped.ranked_by == "document maps (mode map): chunk search only"
