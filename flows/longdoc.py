"""The eval-longdoc flow: evidence retrieval inside long documents (L-Eval layout), bag-of-chunks
against map-conditioned retrieval in one run, stored in DuckDB."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sidestep.eval.longdoc import run_longdoc
from sidestep.pipeline.summarize import map_params, summarizer_for
from sidestep.storage.warehouse import Warehouse
from sidestep.tasks.common import encoder_for, root_from, settings_from
from sidestep.text.encoder import encoder_key


@task(name="eval-longdoc", cache_policy=NO_CACHE, tags=["eval"])
def longdoc_task(path: str | list[str], config_path: str | None, seed: int, repeats: int,
                 protocol: str = "leave-one-file-out", chunking: str = "sentences") -> dict:
    settings = settings_from(config_path)
    log = get_run_logger()
    t0 = time.perf_counter()
    paths = [path] if isinstance(path, str) else list(path)
    report = run_longdoc(encoder_for(settings), paths, summarizer=summarizer_for(settings),
                         params=map_params(settings), seed=seed, repeats=repeats, log=log.info, protocol=protocol,
                         chunking=chunking, cache_dir=root_from(settings).root / "cache" / "longdoc",
                         encoder_key=encoder_key(settings.encoder.model_path))
    run_id = f"longdoc-{'+'.join(Path(p).stem for p in paths)}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with Warehouse(root_from(settings).eval_db()) as wh:
        n = wh.record_longdoc(run_id=run_id, dataset=",".join(str(Path(p).resolve()) for p in paths),
                              report=report, config={"seed": seed, "repeats": repeats, "protocol": protocol,
                                                     "chunking_mode": chunking,
                                                     "maps": settings.maps.model_dump(),
                                                     "chunking": settings.chunking.model_dump()})
    log.info("eval-longdoc %s: bag_of_chunks R@3=%.3f map_conditioned R@3=%.3f (%d figures stored as %s)",
             Path(paths[0]).name, report["bag_of_chunks"]["recall@3"], report["map_conditioned"]["recall@3"], n, run_id)
    return {**report, "run_id": run_id, "seconds": round(time.perf_counter() - t0, 1)}


@flow(name="eval-longdoc", log_prints=True)
def longdoc_flow(path: str | list[str], seed: int = 0, repeats: int = 5, config_path: str | None = None,
                 protocol: str = "leave-one-file-out", chunking: str = "sentences") -> dict:
    """Evidence-chunk Recall@1/3/5 inside long documents: bag of chunks vs map-conditioned retrieval.

    Args:
        path: An L-Eval style JSONL file of long documents with questions, or a list of them (tuned
            together, each reported on its own).
        seed: Seed of the first split of documents into halves; repeat r uses seed + r.
        repeats: Repeats of the two-fold cross-fitting (tuned on one half, reported on the other, swapped).
        config_path: TOML config file; default: $SIDESTEP_CONFIG, else the embedded sample configuration.
        protocol: "leave-one-file-out" (map parameters learned on each file's self-supervised questions,
            every question counted) or "cross-fit" (tuned on labelled questions of the same files).
        chunking: "sentences" (sentence-aligned windows with overlap) or "tokens" (plain token windows).
    """
    return longdoc_task(path, config_path, seed, repeats, protocol, chunking)
