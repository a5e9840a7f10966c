"""How fast the encoder's forward pass alone can go on this machine: the ceiling of `sidestep reindex`'s ratio to the
bare encoder, since a reindex runs the same forward pass plus everything around it.

On the same texts (SciFact abstracts, title + text, truncated at the model's 256 tokens), in one process, rounds
alternating:
- bare: `SentenceTransformer.encode(texts, batch_size=32)` (tokenizing and pooling included, as a user runs it);
- onnx fp32 / onnx int8: the ONNX Runtime batch graph's forward pass alone (`OnnxBatchEncoder.hidden`) over
  length-sorted batches of the same ids (`length_buckets`, 32 sequences, 8,192 padded tokens), nothing else:
  no tokenizing, pooling, token storage or writing.

Usage: .venv/bin/python benchmarks/encode_ceiling.py [--docs 600] [--rounds 2]
Writes benchmarks/encode_ceiling_last_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
OUT = Path(__file__).with_name("encode_ceiling_last_run.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from sidestep.text.encoder import Encoder
    from sidestep.text.onnx_batch import OnnxBatchEncoder, length_buckets

    docs = [json.loads(line) for line in (DATA / "scifact" / "corpus.jsonl").open()][:a.docs]
    texts = [f"{d['title']} {d['text']}".strip() for d in docs]
    enc = Encoder(backend="onnx")
    st = enc.st
    limit = st.max_seq_length
    pieces = enc.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit - 2)["input_ids"]
    ids = [enc.wrap_specials(x) for x in pieces]  # [CLS] pieces [SEP], at most `limit`, as the bare encoder reads
    tokens = sum(map(len, ids))
    batches = []
    for idx in length_buckets([len(x) for x in ids], 32, 8192):
        width = len(ids[idx[0]])
        b, m = np.zeros((len(idx), width), np.int64), np.zeros((len(idx), width), np.int64)
        for r, i in enumerate(idx):
            b[r, :len(ids[i])], m[r, :len(ids[i])] = ids[i], 1
        batches.append((b, m))
    example = enc.query_ids(["a query"])[0]
    graphs = {q: OnnxBatchEncoder(enc.model, type_ids=enc._type_ids, num_threads=enc_threads(), quantize=q,
                                  example_ids=example) for q in ("none", "int8")}

    def bare() -> None:
        st.encode(texts, batch_size=32)

    def graph(q: str):
        def run() -> None:
            for b, m in batches:
                graphs[q].hidden(b, m)
        return run

    runs = {"bare": bare, "onnx_fp32": graph("none"), "onnx_int8": graph("int8")}
    st.encode(texts[:64], batch_size=32)  # warm every path
    for q in graphs:
        graphs[q].hidden(*batches[-1])
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            seconds[k].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in seconds.items()}
    res = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
           "cpus": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3], "docs": len(texts),
           "tokens": tokens, "rounds": a.rounds, "seconds": seconds,
           "tokens_per_s": {k: tokens / s for k, s in best.items()},
           "over_bare": {k: best["bare"] / s for k, s in best.items()}}
    OUT.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def enc_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
