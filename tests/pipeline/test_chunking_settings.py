"""The [chunking] settings reach the embed stage: sentence-aligned windows where asked, and a change of
chunking re-encodes instead of reusing chunks cut the old way."""

from __future__ import annotations

import json

import pytest

from sidestep.config import ChunkingConfig, SourceConfig
from sidestep.docmaps.sentences import split_sentences
from sidestep.pipeline.common import store_key
from sidestep.pipeline.embed import embed_domain
from sidestep.pipeline.ingest import ingest_source
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.text.encoder import doc_text, encoder_key

pytestmark = pytest.mark.slow

TEXT = " ".join(f"The heron colony number {i} nests in the reeds beside mill pond {i} each spring."
                for i in range(24))


def _ingest(root, tmp_path, text: str = TEXT) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "d1", "title": "", "text": text}) + "\n")
    ingest_source(root, SourceConfig(domain="d", path=str(corpus), format="jsonl"), max_text_bytes=10**6)


def _chunks(root, settings) -> list[tuple[int, int]]:
    t = EmbeddingStore(root, store_key(settings), 384).catalog().sort_by("chunk_idx")
    return list(zip(t["char_start"].to_pylist(), t["char_end"].to_pylist(), strict=True))


def _cut_pairs(chunks: list[tuple[int, int]], spans: list[tuple[int, int]]) -> int:
    """Adjacent sentence pairs that no chunk holds whole."""
    return sum(not any(a <= spans[i][0] and spans[i + 1][1] <= b for a, b in chunks) for i in range(len(spans) - 1))


def test_sentence_boundaries_keep_every_two_adjacent_sentences_inside_one_chunk(data_root, settings, tmp_path):
    _ingest(data_root, tmp_path)
    spans = split_sentences(doc_text("", TEXT))
    assert len(spans) == 24
    small = dict(window_tokens=64, overlap_tokens=16)
    by_tokens = settings.model_copy(update={"chunking": ChunkingConfig(**small)})
    by_sentences = settings.model_copy(update={"chunking": ChunkingConfig(**small, boundaries="sentences")})
    for s in (by_tokens, by_sentences):
        assert embed_domain(data_root, s, "d", show_progress=False).encoded == 1
    tokens, sentences = _chunks(data_root, by_tokens), _chunks(data_root, by_sentences)
    assert len(tokens) > 3 and len(sentences) > 3
    starts, ends = {a for a, _ in spans}, {b for _, b in spans}
    assert all(a in starts and b in ends for a, b in sentences)  # chunks start and end on sentences
    assert _cut_pairs(sentences, spans) == 0
    assert _cut_pairs(tokens, spans) > 0  # fixed token windows cut some pairs (what the setting prevents)


def test_a_new_chunking_re_encodes_and_the_default_keeps_its_cache(data_root, settings, tmp_path):
    _ingest(data_root, tmp_path)
    assert store_key(settings) == encoder_key(None)  # the default's key is the encoder's, as before
    first = embed_domain(data_root, settings, "d", show_progress=False)
    n_default = len(_chunks(data_root, settings))
    assert first.encoded == 1 and n_default >= 1
    small = settings.model_copy(update={"chunking": ChunkingConfig(window_tokens=64, overlap_tokens=16)})
    assert store_key(small) != store_key(settings)
    again = embed_domain(data_root, small, "d", show_progress=False)
    assert again.encoded == 1 and again.reused == 0  # not the 256-token chunks under another name
    assert len(_chunks(data_root, small)) > max(3, n_default)
    assert embed_domain(data_root, settings, "d", show_progress=False).encoded == 0  # the default's cache stands
