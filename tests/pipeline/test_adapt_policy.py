"""Which domains the nightly adapts the general verifier for: never over a verifier trained on judgments nor over
the domain's own self-supervised one; again only when an input of the attempt changed."""

from __future__ import annotations

from sidestep.config import Settings
from sidestep.pipeline.adapt import attempt_key, last_attempt, needs_adaptation, record_attempt
from sidestep.storage.artifacts import IndexStore
from sidestep.storage.rankers import GENERAL_DOMAIN
from sidestep.storage.verifiers import verifier_store
from tests.storage.test_artifacts import _publish


def _verifier(root, domain: str, version: str, **manifest) -> None:
    store = verifier_store(root)
    with store.staging(domain) as staged:
        (staged / "model.bin").write_bytes(b"w")
        store.publish(domain, staged, version, manifest)


def test_only_domains_without_a_verifier_of_their_own_are_adapted(data_root):
    assert not needs_adaptation(data_root, "news")  # no general verifier yet
    _verifier(data_root, GENERAL_DOMAIN, "g1")
    assert needs_adaptation(data_root, "news")  # nothing of its own
    _verifier(data_root, "labelled", "v1")
    assert not needs_adaptation(data_root, "labelled")  # trained on its judgments
    _verifier(data_root, "selfsup", "v1", self_supervised=True)
    assert not needs_adaptation(data_root, "selfsup")  # its own self-supervised verifier passed its own gate
    _verifier(data_root, "adapted", "v1", self_supervised=True, adapted_from={"version": "g1"})
    assert not needs_adaptation(data_root, "adapted")  # adapted from this general verifier already
    _verifier(data_root, GENERAL_DOMAIN, "g2")
    assert needs_adaptation(data_root, "adapted")  # a newer general verifier: adapt again


def test_an_attempt_is_repeated_only_when_one_of_its_inputs_changed(data_root):
    settings = Settings()
    store = IndexStore(data_root)
    assert attempt_key(data_root, settings, "news") is None  # nothing published: nothing to adapt
    _publish(store, "news", 5, "v1")
    _verifier(data_root, GENERAL_DOMAIN, "g1")
    key = attempt_key(data_root, settings, "news")
    record_attempt(data_root, "news", key, {"published": False, "winner": "maxsim"})
    assert last_attempt(data_root, "news") == key == attempt_key(data_root, settings, "news")
    _publish(store, "news", 6, "v2")
    assert attempt_key(data_root, settings, "news") != key  # a new index version
    key2 = attempt_key(data_root, settings, "news")
    _verifier(data_root, GENERAL_DOMAIN, "g2")
    assert attempt_key(data_root, settings, "news") != key2  # a new general verifier
    assert last_attempt(data_root, "other") is None
