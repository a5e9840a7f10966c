"""sidestep.pipeline: the batch pipeline's steps as plain functions (no Prefect, no Ray).

One module per stage: ingest, embed, summarize (document maps), index (build and publish a domain's
index), rec (codebooks, tables, item index), evalrec, evaluate, verifier (training). Each step takes
a data root and settings, returns a typed report (sidestep.results), and reports progress through an
optional ``log`` callable; sidestep.tasks wraps them in Prefect tasks (retries, cache policy, tags).
"""
