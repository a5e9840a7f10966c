"""Evaluation and training commands: eval, train-verifier, eval-longdoc, eval-rec, pretrain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import JsonOpt, _emit, _engine, _fail, _root, _run, _settings, err, out


def eval_(
    dataset_dir: Annotated[str, typer.Argument(help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to index the corpus into.")],
    k: Annotated[int, typer.Option(help="Results per query (Recall@100 needs 100).", min=1, max=1000)] = 100,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Rerank recall's candidates with the "
                                         "verifier; without one published, train it first on the folder's "
                                         "train qrels (see --train-verifier).")] = True,
    train_verifier: Annotated[bool, typer.Option("--train-verifier/--no-train-verifier", help="Train the "
                                                 "domain's verifier when none is published and the folder has "
                                                 "train qrels.")] = True,
    verifier_from: Annotated[str | None, typer.Option(help="Use this domain's verifier (for a corpus without "
                                                      "training queries).")] = None,
    out_path: Annotated[str | None, typer.Option("--out", help="Also write the run (query_id, doc_id, rank, "
                                                 "score) to this Parquet file.")] = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    min_rel: Annotated[int, typer.Option(help="Smallest grade counted relevant by MRR and Recall.", min=1)] = 1,
    trec_out: Annotated[str | None, typer.Option("--trec-out", help="Also write the run the metrics describe "
                                                 "as a TREC run file (qid Q0 docid rank score tag).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest and index a BEIR folder, run its queries through the serving search path, store the runs
    in DuckDB and print nDCG@10, MRR@10 and Recall@100 (computed by SQL views), with the baselines of the
    same run: pooled cosine (recall only), MaxSim reranking the same candidates, BM25, and BM25 + dense
    reciprocal-rank fusion. A domain without a verifier of its own is served by the ranker chosen on its
    held-out self-supervised queries. A published general verifier that does not serve is applied too, as a
    row of its own, saying which of this corpus's judgments it read (none: the leave-one-corpus-out figure)."""
    res = _run(_engine().evaluate, as_json, dataset_dir, domain, k=k, split=split, min_rel=min_rel, verify=verify,
               train_verifier=train_verifier, verifier_from=verifier_from, out=out_path,
               trec_out=trec_out).as_dict()
    _emit(res, as_json)
    if not as_json:
        v = res["verify"]
        main = {"maxsim": "MaxSim (chosen ranker)", "rrf_bm25_dense": "BM25 + dense fusion (chosen ranker)"}.get(
            v.get("ranker"), "pooled cosine (recall only)")
        if v["applied"]:
            main = f"recall -> verify ({v.get('verifier_kind', 'own')} verifier)"
        t = Table("configuration", "ndcg@10", "mrr@10", "recall@100",
                  title=f"{domain} {split} ({res['queries']} queries, {res['index_version']})")
        g = v.get("general") or {}
        read = ("judgments read: not recorded" if g.get("leave_one_corpus_out") is None
                else "leave-one-corpus-out" if g["leave_one_corpus_out"]
                else "trained on these test judgments" if g.get("trained_on_evaluated_split")
                else "read this corpus's judgments")
        label = {"general_verifier": f"recall -> verify (general verifier, {read}, not served)"}
        for name, m in {main: res["metrics"], **res["baselines"]}.items():
            t.add_row(label.get(name, name), *(f"{m[c]:.4f}" for c in ("ndcg@10", "mrr@10", "recall@100")))
        out.print(t)
        c = res.get("cost") or {}
        if c.get("verify_over_maxsim"):
            out.print(f"verify stage {c['per_query_token_maps_ms'] + c['per_query_verifier_ms']:.1f} ms/query (mean) = "
                      f"{c['verify_over_maxsim']:.2f}x MaxSim ({c['per_query_maxsim_ms']:.1f} ms), medians "
                      f"{c['p50_verify_stage_ms']:.1f} vs {c['p50_maxsim_ms']:.1f} ms; token store "
                      f"{c['token_store']}, {c['bytes_per_doc'] / 1024:.1f} KB/document; the model read "
                      f"{res['verify'].get('verify_top') or 'all'} of {res['verify']['candidates']} candidates")
        if v["requested"] and v.get("reason"):
            err.print(f"[yellow]note:[/yellow] {v['reason']}")
        if g.get("error"):
            err.print(f"[yellow]note:[/yellow] the general verifier {g['verifier_version']} could not be applied "
                      f"beside the served ranker: {g['error']}")
        elif g:
            what = {None: "its manifest does not say which judgments it read",
                    True: "it read none of this corpus's judgments, so its row is the leave-one-corpus-out figure",
                    False: "it was trained on this corpus's judgments"
                           + (f", {split} split included: its row is scored on its own training judgments"
                              if g.get("trained_on_evaluated_split") else "")
                           + ", so its row is not a leave-one-corpus-out figure"}[g.get("leave_one_corpus_out")]
            err.print(f"[yellow]note:[/yellow] the general verifier {g['verifier_version']} was applied too (its row "
                      f"above; {what}); it does not serve"
                      + (", for the reason above" if v.get("ranker_choice") else f": {g['why']}"))
        out.print(f"runs stored as {res['run_group']}-* in {_root().eval_db()}")
        if res.get("trec_out"):
            out.print(f"TREC run {res['run_id']} written to {res['trec_out']}")


def train_verifier(
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Domain to index the corpus into and train "
                                                                      "for (not with --general).")] = None,
    dataset_dir: Annotated[str | None, typer.Argument(help="A BEIR folder with qrels/train.tsv (optional with "
                                                      "--self-supervised).")] = None,
    split: Annotated[str, typer.Option(help="qrels split to train on (never test).")] = "train",
    seed: Annotated[int, typer.Option(help="Seed for near-misses, the validation split and training.")] = 0,
    self_supervised: Annotated[bool, typer.Option("--self-supervised", help="Read no judgments: train on the "
                                                  "domain's own titled documents (title as query, title-free text "
                                                  "as its positive, structural near-misses), and publish only if "
                                                  "the verifier beats pooled cosine and MaxSim on held-out "
                                                  "documents' titles.")] = False,
    general: Annotated[bool, typer.Option("--general", help="Train the general verifier: every --labelled set's "
                                          "judgments plus self-supervised lists (titles, heading questions, "
                                          "sentence crops, near-misses) from every indexed domain's text; then "
                                          "choose each domain's ranker again (it serves a domain without a "
                                          "verifier of its own only where it beats the best untrained ranker "
                                          "beyond the paired 95% interval of the difference).")
                 ] = False,
    labelled: Annotated[list[str] | None, typer.Option("--labelled", help="With --general: DIR=DOMAIN[:SPLIT], a "
                                                       "BEIR folder's judgments (indexed as DOMAIN); repeatable.")
                        ] = None,
    leave_out: Annotated[str | None, typer.Option("--leave-out", help="With --general: a domain whose judgments "
                                                  "are not read (leave-one-corpus-out).")] = None,
    per_domain: Annotated[int | None, typer.Option(help="With --general: self-supervised queries per domain "
                                                   "(default: the config's verify.general_per_domain, 600).")
                          ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train and publish DOMAIN's verifier: positives from the train qrels, hard negatives from recall's top
    candidates, structural near-misses of each positive (negation, antonym, role swap, number, condition).
    With --self-supervised, from the domain's stored text alone (DATASET_DIR optional). Serving hot-loads
    the new version; curves go to DuckDB (verifier_curves)."""
    if general:
        from sidestep.flows.evaluate import train_verifier_flow

        res = _run(train_verifier_flow, as_json, dataset_dir=None, domain=None, seed=seed, general=True,
                   labelled=list(labelled or []), leave_out=leave_out, per_domain=per_domain)
        _emit(res, as_json)
        if not as_json:
            out.print(f"general verifier {res['version']}: {res['train_lists']} training lists, validation nDCG@10 "
                      f"{res['val_ndcg10']}, {res['seconds']:.0f} s; rankers now: {res.get('rankers')}")
        return
    if domain is None:
        _fail("--domain is required (unless --general)", as_json, 2)
    if dataset_dir is None and not self_supervised:
        _fail("DATASET_DIR is required (a BEIR folder with train qrels), unless --self-supervised", as_json, 2)
    if dataset_dir is not None and not Path(dataset_dir).is_dir():
        _fail(f"folder not found: {dataset_dir}", as_json, 2)
    from sidestep.flows.evaluate import train_verifier_flow

    res = _run(train_verifier_flow, as_json, dataset_dir=str(Path(dataset_dir).resolve()) if dataset_dir else None,
               domain=domain, split=split, seed=seed, self_supervised=self_supervised)
    _emit(res, as_json)
    if as_json:
        return
    if self_supervised:
        from sidestep.pipeline.selfsup import summary_line

        out.print(summary_line(res))
        return
    out.print(f"verifier {domain}/{res['version']}: {res['parameters']:,} parameters, {res['train_queries']} "
              f"training queries, best validation nDCG@10 {res['val_ndcg10'] or 0:.4f} at epoch "
              f"{res['best_epoch']}, {res['seconds']:.0f} s; near-misses {res['near_misses']}")


def eval_longdoc(
    paths: Annotated[list[str], typer.Argument(help="L-Eval JSONL files (input = document, instructions = "
                                               "questions, outputs = answers); several files are tuned "
                                               "together and reported each on its own.")],
    seed: Annotated[int, typer.Option(help="Seed of the first split of documents into halves (repeat r uses "
                                      "seed + r).")] = 0,
    repeats: Annotated[int, typer.Option(help="Repeats of the two-fold cross-fitting (parameters tuned on one "
                                         "half's questions, reported on the other's, then swapped).",
                                         min=1)] = 5,
    protocol: Annotated[str, typer.Option(help="leave-one-file-out: map parameters learned on each file's own "
                                          "self-supervised questions (no label read), every question counted; "
                                          "cross-fit: tuned on labelled questions of the same files.")
                        ] = "leave-one-file-out",
    chunking: Annotated[str, typer.Option(help="sentences: sentence-aligned windows with overlap (an answer never "
                                          "falls across a boundary); tokens: plain token windows.")] = "sentences",
    as_json: JsonOpt = False,
) -> None:
    """Evidence-chunk Recall@1/3/5 inside long documents: bag of chunks vs map-conditioned retrieval
    (and section-aware chunks, both together, and a corpus-level routing mode), in one run.
    The JSON's top-level bag_of_chunks / map_conditioned keys are the first file's."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        _fail(f"file not found: {', '.join(missing)}", as_json, 2)
    from sidestep.flows.longdoc import longdoc_flow

    res = _run(longdoc_flow, as_json, path=[str(Path(p).resolve()) for p in paths], seed=seed, repeats=repeats,
               protocol=protocol, chunking=chunking)
    _emit(res, as_json)
    if not as_json:
        for name, f in res.get("files", {}).items():
            t = Table("mode", "recall@1", "recall@3", "recall@5",
                      title=f"{name}: evidence-chunk recall, {res.get('protocol', '')[:60]}...")
            for scope in ("within_document", "corpus", "modes"):
                for mode, m in f.get(scope, {}).items():
                    if isinstance(m, dict) and "recall@3" in m:
                        t.add_row(f"{scope}: {mode}", *(f"{m[k]:.3f}" for k in ("recall@1", "recall@3", "recall@5")))
            out.print(t)
        out.print(f"stored as {res['run_id']} in {_root().eval_db()}")


def eval_rec(
    dataset_dir: Annotated[str, typer.Argument(help="A RecBole atomic-files folder (<name>.inter + "
                                               "<name>.item), a UniSRec folder (<name>.text + "
                                               "<name>.{train,valid,test}.inter) or an LC-Rec folder "
                                               "(<name>.item.json + .inter.json).")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain to load the items and interactions into.")],
    pretrained_from: Annotated[str | None, typer.Option(help="Start from this domain's published model "
                                                        "(run eval-rec on it first).")] = None,
    mode: Annotated[str | None, typer.Option(help="table-only (train only this domain's lookup table), full "
                                             "(everything), scratch (no pre-training). Default: table-only "
                                             "with --pretrained-from, scratch without.")] = None,
    controls: Annotated[bool, typer.Option("--controls/--no-controls", help="Also train the shuffled-codes "
                                           "control (doubles training time).")] = True,
    refit: Annotated[bool, typer.Option(help="Refit the codebook even if the current one still fits.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping on valid NDCG@10); default "
                                               "from config.", min=1)] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Wall-clock budget per trained variant.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for training and the shuffled-codes control.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Sequential recommendation, leave-one-out: Recall@10/50 and NDCG@10/50 on the test split, full
    ranking over all items with nothing masked (the history-masked variant beside it), valid split for
    early stopping; popularity, text-only zero-shot and shuffled-codes controls in the same run. Trained
    variants are scored as served: code logits fused with the text cosine and the log-count popularity
    prior at weights chosen on the valid split ([rec] text_weights, popularity_weights); each is reported
    with its codes alone too (`*_codes_only`)."""
    if not Path(dataset_dir).is_dir():
        _fail(f"folder not found: {dataset_dir}", as_json, 2)
    if mode is not None and mode not in ("table-only", "full", "scratch"):
        _fail(f"unknown mode {mode!r}: expected table-only, full or scratch", as_json, 2)
    if mode in ("table-only", "full") and not pretrained_from:
        _fail(f"--mode {mode} needs --pretrained-from DOMAIN", as_json, 2)
    from sidestep.flows.rec import eval_rec_flow

    res = _run(eval_rec_flow, as_json, dataset_dir=str(Path(dataset_dir).resolve()), domain=domain, mode=mode,
               pretrained_from=pretrained_from, controls=controls, refit=refit, epochs=epochs,
               max_seconds=max_seconds, seed=seed)
    _emit(res, as_json)
    if not as_json:
        t = Table("variant", "recall@10", "ndcg@10", "recall@50", "ndcg@50", "train s",
                  title=f"{domain} test, full ranking, nothing masked ({res['counts']['test_users']} users)")
        f = res["training"]["sidestep"]["text_fusion"]
        rows = {f"sidestep ({res['mode']}, codes + {f['weight']:g} x text + {f.get('popularity', 0):g} x log pop)":
                res["metrics"],
                "sidestep_codes_only": res["metrics_codes_only"], **res["baselines"]}
        train = res["training"]
        for name, m in rows.items():
            secs = train.get(name.split(" ")[0].removesuffix("_codes_only"), {}).get("seconds")
            t.add_row(name, *(f"{m[k]:.4f}" for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")),
                      "-" if secs is None else f"{secs:.0f}")
        out.print(t)
        out.print(f"tables {res.get('table_version')} (codebook {res['codebook_version']}); "
                  f"runs stored as {res['run_group']}-* in {_root().eval_db()}")


def pretrain(
    domain: Annotated[list[str], typer.Option("--domain", "-d", help="A domain with interactions (repeat the "
                                              "option for several; ingest them first).")],
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping on mean valid NDCG@10).",
                                               min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pre-train the sequence encoder over several domains mixed (in-batch negatives across domains plus
    semi-synthetic negatives) and publish every domain's table with it; then `eval-rec NEW --pretrained-from
    D` fine-tunes a new domain's table only."""
    from sidestep.flows.rec import pretrain_flow

    res = _run(pretrain_flow, as_json, domains=domain, epochs=epochs)
    _emit(res, as_json)
    if not as_json:
        t = Table("domain", "tables version", "recall@10", "ndcg@10",
                  title=f"pre-trained in {res['seconds']:.0f} s, {res['epochs_run']} epochs")
        for d, r in res["domains"].items():
            t.add_row(d, r["version"], f"{r['test']['recall@10']:.4f}", f"{r['test']['ndcg@10']:.4f}")
        out.print(t)


def eval_negation(
    source: Annotated[str, typer.Argument(help="Text to build the pairs from: a BEIR folder or corpus.jsonl, a JSONL "
                                          "of id + text, or an L-Eval file (its documents' paragraphs). Use text "
                                          "the verifiers never trained on.")],
    pairs: Annotated[int, typer.Option("--pairs", help="Pairs to build (at most one per passage).", min=1)] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the passage order, the rules and the crops.")] = 0,
    verifier: Annotated[list[str] | None, typer.Option("--verifier", help="A published verifier to score: DOMAIN or "
                                                       "DOMAIN/VERSION (repeatable). Default: every domain's "
                                                       "current verifier in the data root.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The paired negation check: pairs of queries that differ by a negation or an inverted condition,
    each with its own relevant document (the passage before and after the same change); a pair counts
    when both queries rank their own document first (random: 0.25). Scores random, dense (pooled cosine),
    MaxSim, BM25 and the verifiers in one run, with bootstrap 95% intervals over pairs; stored in DuckDB
    (negation_runs, negation_metrics)."""
    if not Path(source).exists():
        _fail(f"not found: {source}", as_json, 2)
    from sidestep.pipeline.negation import eval_negation as run

    res = _run(run, as_json, _root(), _settings(), source, n_pairs=pairs, seed=seed, verifiers=verifier or None,
               log=err.print)
    _emit({k: v for k, v in res.items() if k != "credits"}, as_json)
    if not as_json:
        t = Table("ranker", "pairwise accuracy", "95% CI", "query accuracy",
                  title=f"{res['pairs']} negation pairs from {source} (random level {res['random_level']})")
        for name, s in res["rankers"].items():
            t.add_row(name, f"{s['pairwise_accuracy']:.3f}", f"[{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]",
                      f"{s['query_accuracy']:.3f}")
        out.print(t)
