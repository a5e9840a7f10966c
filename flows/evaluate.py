"""The evaluate flow: ingest a BEIR folder, index it, (train its verifier), run its queries, store the
runs in DuckDB; and the train_verifier flow on its own."""

from __future__ import annotations

from prefect import flow

from sidestep.config import SourceConfig
from sidestep.eval.beir import available_splits
from sidestep.pipeline.verifier import check_training_split
from sidestep.results import DomainReport
from sidestep.storage.verifiers import verifier_store
from sidestep.tasks.common import root_from, settings_from
from sidestep.tasks.evaluate import evaluate_task
from sidestep.tasks.rankers import choose_ranker_task
from sidestep.tasks.verifier import (
    train_general_verifier_task,
    train_verifier_self_supervised_task,
    train_verifier_task,
)

from .common import index_domain


def _index(root: str, settings, dataset_dir: str, domain: str) -> DomainReport:
    """The BEIR folder's corpus as DOMAIN's whole content (a snapshot), indexed and published."""
    return index_domain(root, settings, domain,
                        [SourceConfig(domain=domain, path=dataset_dir, format="beir", snapshot=True)])


@flow(name="train-verifier", log_prints=True)
def train_verifier_flow(dataset_dir: str | None, domain: str | None, split: str = "train", seed: int = 0,
                        config_path: str | None = None, self_supervised: bool = False, general: bool = False,
                        labelled: list[str] | None = None, leave_out: str | None = None,
                        per_domain: int | None = None) -> dict:
    """Index DATASET_DIR (a BEIR folder) into DOMAIN, then train and publish DOMAIN's verifier on its SPLIT
    qrels: hard negatives from recall's top candidates and structural near-misses of each positive.

    With self_supervised, no judgment is read: DOMAIN's verifier trains on title pseudo-queries over its
    stored documents and their near-misses, and is published only if it beats pooled cosine and MaxSim on
    held-out documents' titles (DATASET_DIR, when given, is indexed first; without it, DOMAIN's published
    index is used as it is).

    Args:
        dataset_dir: Path of the dataset folder (BEIR: corpus.jsonl, queries.jsonl, qrels/); optional with
            self_supervised.
        domain: Domain name (a folder-safe name: letters, digits, dot, dash, underscore).
        split: Qrels split to train on (never test); unused with self_supervised.
        seed: Random seed, for reproducible runs.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
        self_supervised: Train from the domain's own text, no labels (see above).
        general: Train the general verifier instead (every domain without one of its own may be served by it,
            where it beats the best untrained ranker on the domain's held-out self-supervised queries beyond the
            paired 95% interval of the difference): from
            the LABELLED sets' judgments and self-supervised lists of every indexed domain's text; then choose
            every such domain's ranker again.
        labelled: With general: labelled sets as DIR=DOMAIN[:SPLIT] (each indexed as DOMAIN first).
        leave_out: With general: a domain whose judgments are not read (leave-one-corpus-out).
        per_domain: With general: self-supervised queries drawn from each domain's text (default: the
            config's verify.general_per_domain).
    """
    settings = settings_from(config_path)
    root = str(root_from(settings).root)
    if general:
        from sidestep.pipeline.general import parse_labelled

        sets = [parse_labelled(x) for x in labelled or []]
        for ls in sets:
            _index(root, settings, ls.dataset_dir, ls.domain)
        res = train_general_verifier_task(root, settings, [f"{s.dataset_dir}={s.domain}:{s.split}" for s in sets],
                                          leave_out, per_domain, seed)
        rdir = root_from(settings)
        res["rankers"] = {d: (choose_ranker_task(root, settings, d) or {}).get("ranker")
                          for d in rdir.domains_with_indexes() if verifier_store(rdir).current(d) is None}
        return res
    if domain is None:
        raise ValueError("a domain is needed, unless the verifier is the general one")
    if self_supervised:
        if dataset_dir:
            _index(root, settings, dataset_dir, domain)
        return train_verifier_self_supervised_task(root, settings, domain, seed)
    if not dataset_dir:
        raise ValueError("a DATASET_DIR with train qrels is needed, unless the verifier is self-supervised")
    check_training_split(split)  # before indexing, and not retried: a wrong split stays wrong
    _index(root, settings, dataset_dir, domain)
    return train_verifier_task(root, settings, dataset_dir, domain, split, seed)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(dataset_dir: str, domain: str, k: int = 100, split: str = "test", min_rel: int = 1,
                  verify: bool = True, train_verifier: bool = True, verifier_from: str | None = None,
                  out: str | None = None, config_path: str | None = None) -> dict:
    """Evaluate DATASET_DIR's SPLIT queries against DOMAIN through the serving search path.

    With verify and no published verifier for DOMAIN, one is trained first on the folder's train qrels
    (when it has them); VERIFIER_FROM uses another domain's verifier instead (a domain without training
    queries). Pooled cosine, MaxSim, BM25 and their fusion run beside it as baselines.

    Args:
        dataset_dir: Path of the dataset folder (BEIR: corpus.jsonl, queries.jsonl, qrels/).
        domain: Domain name (a folder-safe name: letters, digits, dot, dash, underscore).
        k: Results per query (Recall@k depth).
        split: Qrels split to evaluate.
        min_rel: Smallest relevance grade that counts as relevant.
        verify: Rerank recall's candidates with the domain's verifier.
        train_verifier: Train a verifier first when the domain has none and the folder has train qrels.
        verifier_from: Use this domain's verifier instead (for corpora without training queries).
        out: Write the run's Parquet here too.
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
    """
    settings = settings_from(config_path)
    root_dir = root_from(settings)
    root = str(root_dir.root)
    built = _index(root, settings, dataset_dir, domain)
    trained = None
    if (verify and train_verifier and verifier_from is None and verifier_store(root_dir).current(domain) is None
            and "train" in available_splits(dataset_dir) and split != "train"):
        trained = train_verifier_task(root, settings, dataset_dir, domain, "train", 0)
    res = evaluate_task(root, settings, dataset_dir, domain, k, split, min_rel, out, verify, verifier_from)
    res["ingest"], res["embed"], res["index"] = (built.ingest[0].as_dict(), built.embed.as_dict(),
                                                  built.index.as_dict())
    if trained:
        res["verifier_training"] = {k2: trained.get(k2) for k2 in ("version", "seconds", "parameters", "val_ndcg10",
                                                                   "best_epoch", "train_queries", "near_misses")}
    return res
