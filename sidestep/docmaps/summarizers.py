"""Summarizers turn a passage (a section, or the section summaries of a document) into a summary
within a character budget. The default is extractive (budgeted facility location over sentence
embeddings); any `Summarizer` can replace it, e.g. `LLMSummarizer` for an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sidestep.docmaps.docmap import MapError
from sidestep.docmaps.sentences import clean_text


# ----------------------------------------------------------------------------- summarizers
@dataclass
class Passage:
    """What a summarizer reads: sentences in order, optionally their unit vectors and weights."""

    sentences: list[str]
    vectors: np.ndarray | None = None  # (n, dim) unit rows, zero rows = unknown
    weights: np.ndarray | None = None  # (n,) how much each sentence counts for coverage
    title: str = ""


@dataclass(frozen=True)
class Summary:
    text: str
    picked: tuple[int, ...] | None = None  # sentence indices for extractive summaries


@runtime_checkable
class Summarizer(Protocol):
    """Turns a passage into a summary of at most `budget_chars` characters."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def summarize(self, passage: Passage, budget_chars: int) -> Summary: ...


def truncate(text: str, budget: int) -> str:
    """Cut at a word boundary so the result has at most `budget` characters."""
    text = text.strip()
    if len(text) <= budget:
        return text
    cut = text.rfind(" ", 0, budget)
    return text[:cut if cut > budget // 2 else budget].rstrip()


class ExtractiveSummarizer:
    """Budgeted facility location over sentence embeddings (Lin & Bilmes 2011), or centrality.

    Facility location picks sentences that together *cover* the passage (every sentence is
    close to some picked one), which suits maps better than pure centrality, which repeats the
    dominant topic. Gains are divided by length**length_power so long sentences pay for their
    budget. Prose sentences (ending in . ! ?) of at least `min_chars` are preferred as
    candidates; every sentence still counts for coverage. Picks are returned in document order.
    """

    name = "extractive"

    def __init__(self, method: str = "facility", *, min_chars: int = 25, length_power: float = 0.5):
        if method not in ("facility", "centrality"):
            raise ValueError(f"unknown method {method!r}")
        self.method, self.min_chars, self.length_power = method, min_chars, length_power

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "min_chars": self.min_chars, "length_power": self.length_power}

    def summarize(self, passage: Passage, budget_chars: int) -> Summary:
        sents = passage.sentences
        if not sents:
            return Summary("", ())
        lengths = np.asarray([len(s) + 1 for s in sents], dtype=np.float64)
        cands = self._candidates(sents)
        vecs = passage.vectors
        if vecs is None or not np.any(vecs[cands]):
            picked = self._lead(cands, lengths, budget_chars)
        else:
            picked = self._select(vecs, passage.weights, cands, lengths, budget_chars)
        if not picked:  # nothing fits: the most central candidate, cut to the budget
            i = self._most_central(vecs, passage.weights, cands)
            return Summary(truncate(sents[i], budget_chars), (i,))
        picked = sorted(picked)
        return Summary(" ".join(sents[i] for i in picked), tuple(picked))

    def _candidates(self, sents: list[str]) -> np.ndarray:
        long_ = [i for i, s in enumerate(sents) if len(s) >= self.min_chars and len(s.split()) >= 4]
        prose = [i for i in long_ if _ends_sentence(sents[i])]
        return np.asarray(prose if len(prose) >= 2 else long_ or list(range(len(sents))))

    @staticmethod
    def _most_central(vecs: np.ndarray | None, weights: np.ndarray | None, cands: np.ndarray) -> int:
        if vecs is None or not np.any(vecs[cands]):
            return int(cands[0])
        w = np.ones(len(vecs)) if weights is None else np.asarray(weights, dtype=np.float64)
        return int(cands[int(np.argmax(w @ np.clip(vecs @ vecs[cands].T, 0.0, None)))])

    @staticmethod
    def _lead(cands: np.ndarray, lengths: np.ndarray, budget: int) -> list[int]:
        picked, used = [], 0.0
        for i in cands:
            if used + lengths[i] <= budget + 1:
                picked.append(int(i))
                used += lengths[i]
        return picked

    def _select(self, vecs: np.ndarray, weights: np.ndarray | None, cands: np.ndarray,
                lengths: np.ndarray, budget: int) -> list[int]:
        sim = np.clip(vecs @ vecs[cands].T, 0.0, None)  # (n_all, n_cand)
        w = np.ones(len(vecs)) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.method == "centrality":
            return self._by_order(cands, w @ sim, lengths, budget)
        return self._facility(sim, w, cands, lengths, budget)

    def _by_order(self, cands: np.ndarray, score: np.ndarray, lengths: np.ndarray, budget: int) -> list[int]:
        picked, used = [], 0.0
        for j in np.argsort(-score, kind="stable"):
            i = int(cands[j])
            if used + lengths[i] <= budget + 1:
                picked.append(i)
                used += lengths[i]
        return picked

    def _facility(self, sim: np.ndarray, w: np.ndarray, cands: np.ndarray, lengths: np.ndarray,
                  budget: int) -> list[int]:
        cover = np.zeros(sim.shape[0])
        free = np.ones(len(cands), bool)
        cost = lengths[cands] ** self.length_power
        picked, used = [], 0.0
        while True:
            free &= used + lengths[cands] <= budget + 1
            if not free.any():
                break
            gain = (w[:, None] * np.maximum(sim - cover[:, None], 0.0)).sum(0) / cost
            gain[~free] = -np.inf
            j = int(np.argmax(gain))
            if gain[j] <= 0 and picked:
                break
            picked.append(int(cands[j]))
            used += lengths[cands[j]]
            cover = np.maximum(cover, sim[:, j])
            free[j] = False
        return picked


def _ends_sentence(s: str) -> bool:
    return s.rstrip("\"')]\u201d\u2019 ").endswith((".", "!", "?"))


class LLMSummarizer:
    """Summaries from an OpenAI-compatible `/v1/chat/completions` endpoint (off by default).

    Any transport or format failure raises MapError so the caller quarantines that document's
    map; the reply is cut to the budget. The API key is read from the environment variable
    named in config, never stored in the map's params.
    """

    name = "llm"

    def __init__(self, endpoint: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 60.0,
                 max_input_chars: int = 12_000, temperature: float = 0.0, trust_env: bool = True):
        self.endpoint, self.model, self.api_key_env = endpoint, model, api_key_env
        self.timeout_s, self.max_input_chars, self.temperature = timeout_s, max_input_chars, temperature
        self.trust_env = trust_env
        self._client: Any = None

    def params(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "model": self.model, "temperature": self.temperature,
                "max_input_chars": self.max_input_chars}

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"

    def _headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise MapError(f"environment variable {self.api_key_env} (LLM API key) is not set")
        return {"Authorization": f"Bearer {key}"}

    def _prompt(self, passage: Passage, budget: int) -> str:
        what = f'the section "{passage.title}"' if passage.title else "the following text"
        body = truncate(" ".join(passage.sentences), self.max_input_chars)
        return (f"Summarize {what} in at most {budget} characters. Keep names, numbers and the main "
                f"claims. Reply with the summary only.\n\n{body}")

    def summarize(self, passage: Passage, budget_chars: int) -> Summary:
        if not passage.sentences:
            return Summary("")
        import httpx

        payload = {"model": self.model, "temperature": self.temperature,
                   "max_tokens": max(16, budget_chars // 3),
                   "messages": [{"role": "system", "content": "You write short, faithful summaries."},
                                {"role": "user", "content": self._prompt(passage, budget_chars)}]}
        try:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s, trust_env=self.trust_env)
            resp = self._client.post(self.url, json=payload, headers=self._headers())
            resp.raise_for_status()
            text = resp.json()["choices"][0]["message"]["content"]
        except MapError:
            raise
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            raise MapError(f"LLM summarizer failed: {type(e).__name__}: {e}") from e
        if not isinstance(text, str) or not text.strip():
            raise MapError("LLM summarizer returned an empty summary")
        return Summary(truncate(clean_text(text), budget_chars))
