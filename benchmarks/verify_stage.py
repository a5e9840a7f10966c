"""The verify stage's compiled parts against their reference forms, in one process.

Each row times a fast path and the plain form it replaces on the same inputs, alternating which goes
first, and reports the median per query and the ratio; the outputs are checked equal before timing.
The inputs have SciFact's shape (100 candidates of 150-511 tokens, 20 query tokens, 384 dimensions,
PQ with 32 sub-spaces of 256 codewords; a verifier of the default size), drawn at random, so the
benchmark needs no data root:

- PQ cosines: the compiled blocked lookup-table pass vs an embedding bag over the same tables vs
  decoding the codes and multiplying.
- map features: the compiled one-pass reduction of the flat cosines vs the padded tensor form
  (`map_features(token_maps(...))`).
- verifier forward: `score` ([CLS]-only last layer with folded projections, query terms computed once
  per query) vs the full encoder over every position.

    .venv/bin/python benchmarks/verify_stage.py [--repeats 30] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import BENCHMARKS_MD, splice, write_last_run

from sidestep.verify import candidates as C
from sidestep.verify import features as F
from sidestep.verify import model as V

START, END = "<!-- verify-stage:start -->", "<!-- verify-stage:end -->"


def inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(150, 512, 100).astype(np.int64)
    n, m, ksub, dim = int(lengths.sum()), 32, 256, 384
    cent = (rng.normal(size=(m, ksub, dim // m)) / np.sqrt(dim)).astype(np.float32)
    codes = rng.integers(0, ksub, (n, m)).astype(np.uint8)
    q = F.normalize(rng.normal(size=(20, dim)).astype(np.float32))
    return {"flat": F.FlatTokens(None, lengths, codes, cent), "q": q, "rng": rng}


def embedding_bag_cosines(flat: F.FlatTokens, q: torch.Tensor) -> torch.Tensor:
    """The form the compiled pass replaced: torch's embedding bag over the same lookup tables."""
    nq = q.shape[0]
    m, ksub, dsub = flat.centroids.shape
    cent = torch.from_numpy(flat.centroids)
    table = torch.cat([torch.einsum("qmd,mkd->mkq", q.reshape(nq, m, dsub), cent),
                       cent.square().sum(-1, keepdim=True)], -1).reshape(m * ksub, nq + 1)
    idx = torch.from_numpy(flat.codes).long() + torch.arange(0, m * ksub, ksub)
    dots = torch.nn.functional.embedding_bag(idx, table, mode="sum")
    return dots[:, :nq] / dots[:, nq:].sqrt().clamp(min=1e-12)


def decoded_cosines(flat: F.FlatTokens, q: torch.Tensor) -> torch.Tensor:
    vecs = torch.from_numpy(flat.vectors())
    return (vecs @ q.T) / vecs.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def padded_features(flat: F.FlatTokens, q: torch.Tensor) -> torch.Tensor:
    vecs = flat.vectors()
    starts = np.concatenate([[0], np.cumsum(flat.lengths)[:-1]])
    docs = [vecs[a:a + n] for a, n in zip(starts, flat.lengths, strict=True)]
    sim, mask = F.token_maps(q, docs, 512)
    return F.map_features(sim, mask)


def full_encoder_scores(model: V.Verifier, c: C.Candidates) -> torch.Tensor:
    feats, qtok, qmask, glob, _ = V.collate([c])
    nq = feats.shape[1]
    x = model.tok_in(torch.cat([feats, model.qproj(qtok)], -1)) + model.pos(torch.arange(nq))[None]
    x = torch.cat([model.cls_in(glob)[:, None, :], x], 1)
    return model.readout(model.encoder(x)[:, 0], glob)


def pair(fast, slow, repeats: int) -> dict:
    """Median ms of each over `repeats` alternating calls, and slow / fast."""
    for f in (fast, slow):
        f()
    t = {"fast": [], "slow": []}
    for r in range(repeats):
        for name in (("fast", "slow") if r % 2 else ("slow", "fast")):
            f = fast if name == "fast" else slow
            t0 = time.perf_counter()
            f()
            t[name].append((time.perf_counter() - t0) * 1e3)
    a, b = statistics.median(t["fast"]), statistics.median(t["slow"])
    return {"fast_ms": a, "reference_ms": b, "speedup": b / a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(BENCHMARKS_MD))
    args = ap.parse_args()
    torch.manual_seed(0)
    d = inputs()
    flat, q = d["flat"], d["q"]
    F.warm_up()
    rows: dict[str, dict] = {}
    with torch.inference_mode():
        fast = flat.cosines(q)
        torch.testing.assert_close(fast, embedding_bag_cosines(flat, q), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast, decoded_cosines(flat, q), atol=1e-4, rtol=1e-4)
        rows["PQ cosines vs embedding bag"] = pair(lambda: flat.cosines(q), lambda: embedding_bag_cosines(flat, q),
                                                   args.repeats)
        rows["PQ cosines vs decode + matmul"] = pair(lambda: flat.cosines(q), lambda: decoded_cosines(flat, q),
                                                     args.repeats)
        torch.testing.assert_close(F.token_features(q, flat)[0], padded_features(flat, q), atol=2e-5, rtol=1e-4)
        rows["map features vs padded tensor form"] = pair(lambda: F.token_features(q, flat),
                                                          lambda: padded_features(flat, q), args.repeats)
        model = V.Verifier(V.VerifierConfig(), 384).eval()
        feats, _, lengths = F.token_features(q, flat)
        lex = torch.zeros((len(lengths), q.shape[0], 3))
        allf = torch.cat([feats, lex], -1)
        glob = C.global_features(d["rng"].normal(size=len(lengths)).astype(np.float32), feats[..., 0], lex, lengths)
        c = C.Candidates(allf, q, glob, feats[..., 0].sum(-1))
        np.testing.assert_allclose(V.score(model, [c])[0], full_encoder_scores(model, c).numpy(), atol=1e-4)
        rows["verifier forward vs full encoder"] = pair(lambda: V.score(model, [c]),
                                                        lambda: full_encoder_scores(model, c), args.repeats)
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "tokens": int(flat.lengths.sum()), "repeats": args.repeats,
            "threads": torch.get_num_threads()}
    write_last_run("verify_stage", {"meta": meta, "rows": rows})
    lines = [START, "## The verify stage's compiled parts (in-process, against their reference forms)", "",
             f"Measured {meta['date']} by `benchmarks/verify_stage.py`: 100 random candidates of SciFact's shape "
             f"({meta['tokens']} tokens, 20 query tokens, PQ 32 x 256), medians of {args.repeats} alternating calls "
             "in one process; outputs checked equal before timing.", "",
             "| part | fast path | reference | speedup |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['fast_ms']:.2f} ms | {v['reference_ms']:.2f} ms | **{v['speedup']:.1f}x** |"
              for k, v in rows.items()]
    lines.append(END)
    section = "\n".join(lines)
    splice(Path(args.out), section, START, END)
    print(section)


if __name__ == "__main__":
    main()
