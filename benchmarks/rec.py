"""Recommendation benchmarks (VQ-Rec protocol) on ../shared/data/amazon-{scientific,office}.

One run, one data root, every figure from the real `sidestep eval-rec` command:
- Scientific from scratch, with popularity, text-only zero-shot and shuffled-codes
  controls (the headline row);
- transfer Office -> Scientific and Scientific -> Office: table-only fine-tuning
  against full fine-tuning, starting from the other domain's published model;
- code alignment on a planted problem: Scientific's codes permuted on purpose per
  position, the frozen Scientific model, learned alignment vs identity and random.

Writes benchmarks/rec_last_run.json and the section between the rec markers of
BENCHMARKS.md. Phases are checkpointed in <root>/bench_rec_partial.json; --resume ROOT
continues a run that was cut off.

Usage: .venv/bin/python benchmarks/rec.py [--data ../shared/data] [--resume ROOT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import ir_measures
import numpy as np
import torch
from common import BENCHMARKS_MD, DATA, bench_env, machine, sh, splice, write_last_run
from ir_measures import R, ScoredDoc, nDCG

from sidestep.eval.beir import load_qrels, load_queries
from sidestep.rec.align import apply_permutation, random_permutation, recovery, used_codewords
from sidestep.rec.doctables import (
    DocTableConfig,
    DocTables,
    max_chunk_scores,
    table_scores,
    train_doc_tables,
    tune_weight,
)
from sidestep.rec.quantize import CodebookSpec, fit_codebook, shuffled_codes
from sidestep.rec.tables import model_from_state
from sidestep.rec.training import evaluate, fit_code_alignment
from sidestep.storage.embeddings import EmbeddingStore
from sidestep.storage.paths import DataRoot
from sidestep.storage.recstore import load_table_version
from sidestep.text.encoder import encoder_key, model_dim

START, END = "<!-- rec:start -->", "<!-- rec:end -->"
BUDGET_S = 1140  # per trained variant: the issue allows 20 minutes on this machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--resume", default=None, help="Data root of an interrupted run to continue.")
    ap.add_argument("--skip-reverse", action="store_true", help="Leave out the Scientific -> Office transfer.")
    ap.add_argument("--render-only", action="store_true",
                    help="Write the report from the phases --resume ROOT has finished, run nothing.")
    ap.add_argument("--note", default="", help="Conditions of this run (e.g. 'machine shared with ...').")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    root = Path(args.resume) if args.resume else Path(tempfile.mkdtemp(prefix="ssb-rec-", dir="/tmp"))
    env = bench_env(root, prefect_home=root / "prefect")
    env.pop("SIDESTEP_CONFIG", None)
    part = root / "bench_rec_partial.json"
    state: dict = json.loads(part.read_text()) if part.is_file() else {}

    def phase(name: str, fn):
        if name in state:
            return state[name]
        print(f"[bench-rec] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        state[name] = fn()
        part.write_text(json.dumps(state, default=str))
        print(f"[bench-rec] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        return state[name]

    sci, office = str(data / "amazon-scientific"), str(data / "amazon-office")
    if args.render_only:
        write_report(state, args.note, root)
        return

    def eval_rec(path: str, domain: str, *extra: str) -> dict:
        res, wall, peak, cpu = sh(["eval-rec", path, "--domain", domain, "--max-seconds", str(BUDGET_S), *extra,
                                   "--json"], env)
        return {"result": res, "wall_s": wall, "peak_rss_mb": peak, "cpu_s": cpu}

    # both catalogues first, so that the one codebook is fit on the items of both domains
    phase("ingest_office", lambda: sh(["ingest", office, "--domain", "office", "--json"], env)[0])
    headline = phase("scientific_scratch", lambda: eval_rec(sci, "scientific"))
    phase("office_scratch", lambda: eval_rec(office, "office", "--no-controls"))
    phase("sci_from_office_table", lambda: eval_rec(sci, "sci-from-office", "--pretrained-from", "office",
                                                    "--mode", "table-only", "--no-controls"))
    phase("sci_from_office_full", lambda: eval_rec(sci, "sci-from-office-full", "--pretrained-from", "office",
                                                   "--mode", "full", "--no-controls"))
    phase("alignment", lambda: planted_alignment(root))
    scifact = str(data / "scifact")
    phase("scifact_eval", lambda: sh(["eval", scifact, "--domain", "scifact", "--no-verify", "--json"], env)[0])
    phase("retrieval_tables", lambda: retrieval_tables(root, scifact))
    if not args.skip_reverse:
        phase("office_from_sci_table", lambda: eval_rec(office, "office-from-sci", "--pretrained-from",
                                                        "scientific", "--mode", "table-only", "--no-controls"))
        phase("office_from_sci_full", lambda: eval_rec(office, "office-from-sci-full", "--pretrained-from",
                                                       "scientific", "--mode", "full", "--no-controls"))
    write_report(state, args.note, root)
    print(f"[bench-rec] headline: {json.dumps(headline['result']['metrics'])}", file=sys.stderr)


def write_report(state: dict, note: str, root: Path) -> None:
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "note": note,
              "root": str(root), **state}
    write_last_run("rec", report, default=str)
    splice(BENCHMARKS_MD, render(report), START, END)


def planted_alignment(root: Path, steps: int = 200, seed: int = 0) -> dict:
    """Scientific's codes with every position's codewords permuted on purpose; the frozen Scientific model
    must find, per position, which pre-trained codeword each permuted codeword stands for."""
    from sidestep.pipeline.rec import domain_data
    from sidestep.tasks.common import settings_from

    torch.set_num_threads(os.cpu_count() or 1)
    dr = DataRoot(root)
    tv = load_table_version(dr, "scientific")
    model = model_from_state(tv.model_state, "scientific")
    _, data = domain_data(dr, settings_from(None), "scientific")
    codes = tv.codes
    d, m = model.positions, model.codewords
    planted = random_permutation(d, m, seed=seed + 1)  # old codeword c -> new codeword planted[d, c]
    new_codes = np.take_along_axis(planted, codes.T, axis=1).T
    truth = np.argsort(planted, axis=1)  # new codeword c' -> old codeword truth[d, c']
    used = used_codewords(new_codes, m)
    table = model.tables["scientific"].table.detach()
    new_c = torch.from_numpy(new_codes)

    def test_ndcg(perm) -> dict:
        aligned = apply_permutation(table, perm)
        return evaluate(model, "scientific", new_c, data.test, table=aligned)[0]

    out = {"positions": d, "codewords": m, "used_codewords": int(used.sum()), "steps": steps,
           "oracle": evaluate(model, "scientific", torch.from_numpy(codes), data.test)[0]}
    ident = np.tile(np.arange(m), (d, 1))
    rand = random_permutation(d, m, seed=seed + 7)
    out["identity"] = {"recovery_used": recovery(ident, truth, used), "test": test_ndcg(ident)}
    out["random"] = {"recovery_used": recovery(rand, truth, used), "test": test_ndcg(rand)}
    t0 = time.perf_counter()
    align, curve = fit_code_alignment(model, "scientific", new_c, data, steps=steps, seed=seed)
    learned = align.permutation()
    out["learned"] = {"recovery_used": recovery(learned, truth, used), "recovery_all": recovery(learned, truth),
                      "test": test_ndcg(learned), "seconds": round(time.perf_counter() - t0, 1),
                      "loss_first": curve[0], "loss_last": curve[-1]}
    return out


def retrieval_tables(root: Path, scifact: str, seed: int = 0) -> dict:
    """SciFact documents as lookup-table vectors, fine-tuned on qrels/train.tsv against the frozen query
    encoder + a residual adapter; fused with pooled cosine (weight tuned on held-out train queries).
    Control: the same training on codes shuffled across documents."""
    from sidestep.pipeline.rec import load_items
    from sidestep.tasks.common import encoder_for, settings_from

    settings = settings_from(None)
    dr = DataRoot(root)
    items = load_items(dr, settings, "scifact")
    store = EmbeddingStore(dr, *_emb_key(settings))
    rows, chunks = store.gather(items.hashes)
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(items.hashes):
        by_hash.setdefault(h, []).append(i)
    chunk_rows, chunk_doc = [], []
    for r, h in enumerate(rows["content_hash"].to_pylist()):
        for d in by_hash[h]:
            chunk_rows.append(r)
            chunk_doc.append(d)
    chunks, chunk_doc = chunks[chunk_rows], np.asarray(chunk_doc)
    doc_index = {d: i for i, d in enumerate(items.ids)}
    queries = load_queries(scifact)
    q_train, q_test = load_qrels(scifact, "train"), load_qrels(scifact, "test")
    enc = encoder_for(settings)
    train_ids, test_ids = sorted(q_train), sorted(q_test)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_ids))
    dev_ids = [train_ids[i] for i in perm[: len(train_ids) // 5]]
    fit_ids = [train_ids[i] for i in perm[len(train_ids) // 5:]]
    qv = {name: enc.encode_queries([queries[q] for q in ids]) for name, ids in
          (("fit", fit_ids), ("dev", dev_ids), ("test", test_ids))}

    def rel(ids, qrels):
        return {i: {doc_index[d] for d, g in qrels[q].items() if g > 0 and d in doc_index} for i, q in enumerate(ids)}

    pairs = [(i, d) for i, ds in rel(fit_ids, q_train).items() for d in ds]
    pooled = {k: max_chunk_scores(v, chunks, chunk_doc, len(items.ids)) for k, v in qv.items()}
    torch.manual_seed(seed)
    book = fit_codebook(items.vectors, CodebookSpec(positions=32, bits=8, seed=seed))
    codes = book.encode(items.vectors).astype(np.int64)

    def measure(scores: np.ndarray) -> dict:
        run = [ScoredDoc(test_ids[i], items.ids[j], float(scores[i, j]))
               for i in range(len(test_ids)) for j in np.argsort(-scores[i])[:100]]
        qrels = [ir_measures.Qrel(q, d, g) for q in test_ids for d, g in q_test[q].items()]
        m = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], qrels, run)
        return {"ndcg@10": round(m[nDCG @ 10], 4), "recall@100": round(m[R @ 100], 4)}

    out: dict = {"documents": len(items.ids), "train_pairs": len(pairs), "fit_queries": len(fit_ids),
                 "dev_queries": len(dev_ids), "test_queries": len(test_ids),
                 "pooled_cosine": measure(pooled["test"])}
    cfg = DocTableConfig(seed=seed)
    for name, c in (("codes", codes), ("shuffled_codes", shuffled_codes(codes, seed))):
        ct = torch.from_numpy(c)
        model = DocTables(book.table_init())
        start = table_scores(model, ct, qv["test"])
        t0 = time.perf_counter()
        curve = train_doc_tables(model, ct, qv["fit"], pairs, cfg)
        secs = time.perf_counter() - t0
        dev_t, test_t = table_scores(model, ct, qv["dev"]), table_scores(model, ct, qv["test"])
        w, grid = tune_weight(pooled["dev"], dev_t, rel(dev_ids, q_train))
        out[name] = {"table_untrained": measure(start), "table_trained": measure(test_t),
                     "fused": measure(pooled["test"] + w * test_t), "weight": w,
                     "dev_grid": {str(k): round(v, 4) for k, v in grid.items()},
                     "train_seconds": round(secs, 1), "loss_first": curve[0], "loss_last": curve[-1]}
    return out


def _emb_key(settings) -> tuple[str, int]:
    return encoder_key(settings.encoder.model_path), model_dim(settings.encoder.model_path)


def _row(name: str, m: dict, train: dict | None = None) -> str:
    cells = " | ".join(f"{m[k]:.4f}" for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"))
    t = f"{train['seconds']:.0f} s | {train['peak_rss_mb']:.0f} MB | {train['epochs_run']} ({train['best_epoch']})" \
        if train else "- | - | -"
    return f"| {name} | {cells} | {t} |"


def _fusion_label(f: dict) -> str:
    pop = f" + {f['popularity']:g} × log pop" if "popularity" in f else ""  # absent: measured before the prior
    return f"{f['weight']:g} × text{pop}"


def _trained_rows(h: dict, name: str, label: str) -> list[str]:
    """A trained variant fused with the text (as served) and, beside it, with its codes alone."""
    tr = h["training"][name]
    fused = h["metrics"] if name == "sidestep" else h["baselines"][name]
    if "text_fusion" not in tr:  # measured before text fusion existed
        return [_row(label, fused, tr)]
    alone = h["metrics_codes_only"] if name == "sidestep" else h["baselines"][f"{name}_codes_only"]
    return [_row(f"{label}: codes + {_fusion_label(tr['text_fusion'])}", fused, tr),
            _row(f"{label}: codes alone", alone)]


def render(r: dict) -> str:
    h = r["scientific_scratch"]["result"]
    lines = [START, "## Sequential recommendation: discrete codes with learnable lookup tables", "",
             f"Run {r['date']} on {r['machine']}. {r.get('note') or ''}".strip(), "",
             "Protocol: leave-one-out; full ranking over all items of the domain, **nothing masked** (the "
             "protocol of VQ-Rec's published figures); valid split for early stopping, test split reported. "
             "The history-masked figure of each row is in `benchmarks/rec_last_run.json` and in DuckDB "
             "(`rec_metrics`, protocol = 'masked'). Every row below comes from one `sidestep eval-rec` run; "
             "training time and peak RSS are per trained variant, epochs are run (best).", "",
             "Each trained variant is scored as `/recommend` serves it: its code logits (cosine / temperature) "
             "plus w × the text-only zero-shot cosine plus b × log(1 + the item's training interactions), "
             "(w, b) chosen together after training on the valid split from `[rec] text_weights` × "
             "`popularity_weights` ((0, 0) competes, so each is added only where it helps on valid); the same "
             "variant with its codes alone is reported beside it.", "",
             f"### Amazon Scientific, test split ({h['counts']['test_users']} users, {h['counts']['items']} items)",
             "", "| variant | R@10 | N@10 | R@50 | N@50 | train time | peak RSS | epochs |",
             "|---|---|---|---|---|---|---|---|",
             _row("popularity", h["baselines"]["popularity"]),
             _row("text-only zero-shot (recency-weighted mean of history embeddings)",
                  h["baselines"]["text_zero_shot"]),
             *_trained_rows(h, "sidestep", "**sidestep, from scratch** (`eval-rec … --domain scientific`)"),
             *_trained_rows(h, "shuffled_codes", "shuffled-codes control (codes permuted across items)"),
             "| VQ-Rec, published (pre-trained on 5 domains) | 0.1211 | 0.0643 | 0.2369 | 0.0897 | | | |", "",
             "History-masked protocol, same run: " + ", ".join(
                 f"{n} N@10 {m['ndcg@10']:.4f}" for n, m in [
                     ("sidestep", h["metrics_masked"]),
                     *([("sidestep_codes_only", h["metrics_masked_codes_only"])]
                       if "metrics_masked_codes_only" in h else []),
                     *h["baselines_masked"].items()]) + ".", ""]
    lines += ["### Transfer: pre-trained on one domain, fine-tuned on the other", "",
              "Fused as above where fusion weights are given; rows without them were measured before text fusion "
              "existed (codes alone), rows without a popularity weight before the prior existed.", "",
              "| target | start | mode | R@10 | N@10 | R@50 | N@50 | fusion weights | N@10 codes alone | train time "
              "| peak RSS | epochs | trained params |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, target, start in (("scientific_scratch", "Scientific", "-"),
                               ("sci_from_office_table", "Scientific", "Office"),
                               ("sci_from_office_full", "Scientific", "Office"),
                               ("office_scratch", "Office", "-"),
                               ("office_from_sci_table", "Office", "Scientific"),
                               ("office_from_sci_full", "Office", "Scientific")):
        if key not in r:
            continue
        res = r[key]["result"]
        t = res["training"]["sidestep"]
        m = res["metrics"]
        fusion = t.get("text_fusion")
        codes = res.get("metrics_codes_only", m)
        lines.append(f"| {target} | {start} | {res['mode']} | " + " | ".join(
            f"{m[k]:.4f}" for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")) +
            f" | {'-' if fusion is None else _fusion_label(fusion)} | {codes['ndcg@10']:.4f}"
            f" | {t['seconds']:.0f} s | {t['peak_rss_mb']:.0f} MB | {t['epochs_run']} ({t['best_epoch']}) | "
            f"{t['trainable_parameters']:,} |")
    for target, table_key, full_key in (("Scientific", "sci_from_office_table", "sci_from_office_full"),
                                        ("Office", "office_from_sci_table", "office_from_sci_full")):
        if table_key not in r or full_key not in r:
            lines.append(f"\n{target} as the target: not run in this benchmark run.")
            continue
        a, b = r[table_key]["result"], r[full_key]["result"]
        ratio = a["metrics"]["ndcg@10"] / max(b["metrics"]["ndcg@10"], 1e-12)
        ta, tb = a["training"]["sidestep"], b["training"]["sidestep"]
        tratio = ta["seconds"] / max(tb["seconds"], 1e-12)
        cratio = ta.get("cpu_seconds", 0) / max(tb.get("cpu_seconds", 0), 1e-12)
        codes = ""
        if "metrics_codes_only" in a and "metrics_codes_only" in b:
            alone = a["metrics_codes_only"]["ndcg@10"] / max(b["metrics_codes_only"]["ndcg@10"], 1e-12)
            codes = f"; with their codes alone {alone:.1%}"
        lines.append(f"\n{target}: table-only reaches **{ratio:.1%}** of full fine-tuning's N@10{codes}, in "
                     f"**{tratio:.2f}×** its training time ({cratio:.2f}× its CPU seconds).")
    al = r.get("alignment")
    if al is None:
        lines += ["", "### Code alignment on a planted problem", "", "Not run in this benchmark run."]
    else:
        lines += _alignment_lines(al)
    _retrieval_lines(r, lines)
    lines.append(END)
    return "\n".join(lines) + "\n"


def _alignment_lines(al: dict) -> list[str]:
    lines = ["", "### Code alignment on a planted problem", "",
              f"Scientific's codes with each of the {al['positions']} positions' {al['codewords']} codewords "
              f"permuted on purpose; the frozen Scientific model (encoder and table) must learn which pre-trained "
              f"codeword each permuted codeword stands for ({al['used_codewords']} (position, codeword) pairs are "
              f"used by some item). Straight-through Gumbel-Sinkhorn with Hungarian rounding, {al['steps']} steps "
              f"on the training split; test split reported, every row scored by the codes alone (no text "
              f"fusion), so the oracle row is the headline model's codes-alone row.", "",
              "| mapping | recovered (used codewords) | R@10 | N@10 |", "|---|---|---|---|",
              f"| oracle (the original codes) | 1.000 | {al['oracle']['recall@10']:.4f} | "
              f"{al['oracle']['ndcg@10']:.4f} |"]
    for name in ("identity", "random", "learned"):
        x = al[name]
        lines.append(f"| {name} | {x['recovery_used']:.3f} | {x['test']['recall@10']:.4f} | "
                     f"{x['test']['ndcg@10']:.4f} |")
    lines += ["", f"Alignment took {al['learned']['seconds']:.0f} s; training loss "
                  f"{al['learned']['loss_first']:.3f} → {al['learned']['loss_last']:.3f}."]
    return lines


def _retrieval_lines(r: dict, lines: list[str]) -> None:
    rt = r.get("retrieval_tables")
    if not rt:
        lines += ["", "### The same tables as document vectors for retrieval (SciFact)", "",
                  "Not run in this benchmark run."]
    else:
        lines += ["", "### The same tables as document vectors for retrieval (SciFact)", "",
                  f"SciFact's {rt['documents']} documents quantized into 32 codes (OPQ + PQ, 256 codewords); the "
                  "table starts at the codebook's reconstruction and is fine-tuned on `qrels/train.tsv` "
                  f"({rt['train_pairs']} pairs from {rt['fit_queries']} queries) against the frozen query encoder "
                  f"plus a residual adapter. The fusion weight is tuned on {rt['dev_queries']} held-out training "
                  f"queries; {rt['test_queries']} test queries reported. Pooled cosine is the recall stage "
                  "(best chunk per document).", "",
                  "| scoring | nDCG@10 | R@100 |", "|---|---|---|",
                  f"| pooled cosine (recall stage) | {rt['pooled_cosine']['ndcg@10']:.4f} | "
                  f"{rt['pooled_cosine']['recall@100']:.4f} |"]
        for name in ("codes", "shuffled_codes"):
            x = rt[name]
            label = "codes" if name == "codes" else "shuffled-codes control"
            lines += [f"| {label}: table, untrained | {x['table_untrained']['ndcg@10']:.4f} | "
                      f"{x['table_untrained']['recall@100']:.4f} |",
                      f"| {label}: table, fine-tuned | {x['table_trained']['ndcg@10']:.4f} | "
                      f"{x['table_trained']['recall@100']:.4f} |",
                      f"| {label}: pooled + {x['weight']} × table | {x['fused']['ndcg@10']:.4f} | "
                      f"{x['fused']['recall@100']:.4f} |"]



if __name__ == "__main__":
    main()
