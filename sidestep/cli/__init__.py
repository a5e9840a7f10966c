"""The `sidestep` command line: every command has --help, and --json prints one JSON object on stdout.

A thin layer over the Python API (sidestep.api) and the Prefect flows: the commands live in data.py
(ingest, index, reindex, search, status, rollback, unpin, gc), evaluation.py (eval, train-verifier, eval-longdoc,
eval-rec, pretrain), runs.py (export, compare), lab.py (lab), report.py (report) and servers.py (serve,
deploy, demo); common.py holds the app and what they share.
"""

from __future__ import annotations

from .common import app
from .data import gc, index, ingest, reindex, rollback, search, status, unpin
from .evaluation import eval_, eval_longdoc, eval_negation, eval_rec, pretrain, train_verifier
from .lab import lab
from .report import report
from .runs import compare, export
from .servers import demo, deploy, serve

__all__ = ["app"]

# registered in this order, which is the order `sidestep --help` lists them in
app.command()(ingest)
app.command()(index)
app.command()(reindex)
app.command("eval")(eval_)
app.command()(export)
app.command()(compare)
app.command("train-verifier")(train_verifier)
app.command("eval-longdoc")(eval_longdoc)
app.command("eval-negation")(eval_negation)
app.command("eval-rec")(eval_rec)
app.command()(pretrain)
app.command()(lab)
app.command()(report)
app.command()(search)
app.command()(serve)
app.command()(status)
app.command()(rollback)
app.command()(unpin)
app.command()(gc)
app.command()(deploy)
app.command()(demo)
