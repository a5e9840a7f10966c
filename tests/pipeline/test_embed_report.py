"""The embed stage's report (documents/s and tokens/s) and its reader thread."""

from __future__ import annotations

import json
import threading
import time

import pytest

from sidestep.config import SourceConfig
from sidestep.pipeline.embed import _ahead, embed_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.text.encoder import encoder_key


def test_ahead_keeps_order_and_runs_one_item_ahead_on_another_thread():
    seen: list[tuple[str, int]] = []
    main = threading.get_ident()

    def fn(x):
        seen.append(("read", x))
        assert threading.get_ident() != main
        return x * 10

    out = []
    for item, result in _ahead(list(range(5)), fn):
        time.sleep(0.05)  # the reader has time to prepare the next item meanwhile
        seen.append(("use", item))
        out.append((item, result))
    assert out == [(i, i * 10) for i in range(5)]
    assert seen.index(("read", 1)) < seen.index(("use", 0))  # item 1 was read while item 0 was in use


def test_ahead_raises_the_readers_error_at_its_item_and_stops():
    def fn(x):
        if x == 2:
            raise ValueError("unreadable shard")
        return x

    got = []
    with pytest.raises(ValueError, match="unreadable shard"):
        for item, _ in _ahead(list(range(5)), fn):
            got.append(item)
    assert got == [0, 1]


@pytest.mark.slow
def test_embed_reports_tokens_per_second_beside_documents_per_second(data_root, settings, encoder, tmp_path):
    corpus = tmp_path / "c.jsonl"
    docs = [{"id": str(i), "title": f"Note {i}", "text": "Herons nest in the reeds near the old mill. " * (i + 1)}
            for i in range(6)]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    ingest_source(data_root, SourceConfig(domain="d", path=str(corpus), format="jsonl"), max_text_bytes=10**6)
    rep = embed_domain(data_root, settings, "d", show_progress=False)
    assert rep.encoded == 6 and rep.backend == "torch"  # a small job stays on the eager model (backend auto)
    stored = EmbeddingStore(data_root, encoder_key(None), 384).catalog()
    assert rep.tokens_encoded == sum(stored["n_tokens"].to_pylist()) > 6 * 10
    assert rep.tokens_per_s == pytest.approx(rep.tokens_encoded / rep.seconds, rel=0.02)
    assert rep.docs_per_s == pytest.approx(6 / rep.seconds, rel=0.02)
    d = rep.as_dict()
    assert {"docs_per_s", "tokens_per_s", "tokens_encoded", "backend"} <= set(d)
    again = embed_domain(data_root, settings, "d", show_progress=False)
    assert (again.encoded, again.tokens_encoded, again.tokens_per_s, again.backend) == (0, 0, None, None)
