"""What every command shares: the Typer app and its global options, JSON output, clear failures."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="sidestep: batch indexing and serving for retrieval and recommendation.\n\n"
                       "Data lives under the data root (--home, $SIDESTEP_HOME, default ./var).")
err = Console(stderr=True)
out = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON object on stdout.")]
DomainOpt = Annotated[str | None, typer.Option("--domain", "-d", help="Domain name (a-z 0-9 . _ -).")]
FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help="beir|jsonl|csv|parquet|textdir|recbole|"
                                               "unisrec|lcrec (detected when omitted).")]


def _check_source(path: str, domain: str, format: str | None, as_json: bool) -> None:
    """Refuse an unreadable source or a bad domain name before anything starts (exit 2, a clear message)."""
    from sidestep.config import check_name
    from sidestep.ingest.readers import SourceError, detect_format

    try:
        check_name(domain)
        if format is None:
            detect_format(path)
        elif not Path(path).exists():
            raise SourceError(f"source not found: {path}")
    except (SourceError, ValueError) as e:
        _fail(str(e), as_json, 2)


@app.callback()
def main(
    home: Annotated[Path | None, typer.Option("--home", help="Data root (overrides $SIDESTEP_HOME).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config ($SIDESTEP_CONFIG); default: "
                                                "the embedded sample corpus.")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs on stderr as one JSON object per line, with "
                                           "flow_run_id / task_run_id (for a log shipper).")] = False,
) -> None:
    if log_json:  # before Prefect is imported: its logging reads these once
        for h in ("CONSOLE", "CONSOLE_FLOW_RUNS", "CONSOLE_TASK_RUNS"):
            os.environ[f"PREFECT_LOGGING_HANDLERS_{h}_FORMATTER"] = "json"
        os.environ["SIDESTEP_NO_PROGRESS"] = "1"  # no progress bars between the JSON lines
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if home:
        from sidestep.storage.rootcheck import url_scheme

        os.environ["SIDESTEP_HOME"] = str(home) if url_scheme(home) else str(home.resolve())
    if config:
        os.environ["SIDESTEP_CONFIG"] = str(config.resolve())
    from sidestep.storage import runtime
    from sidestep.storage.rootcheck import DataRootError

    try:
        runtime.configure(_root(), create_home="--help" not in sys.argv[1:])  # help alone writes nothing
    except DataRootError as e:  # a URL as the data root: a clear message, exit 2, before any command runs
        _fail(str(e), "--json" in sys.argv, 2)


def _settings():
    from sidestep.config import load_settings

    return load_settings()


def _root():
    from sidestep.storage.paths import DataRoot

    return DataRoot.from_settings(_settings())


def _engine():
    """The Python API's engine over the data root and config the global options chose."""
    from sidestep.api import Engine

    return Engine(_root().root, os.environ.get("SIDESTEP_CONFIG") or None)


@contextlib.contextmanager
def _quiet_stdout(as_json: bool):
    """With --json, anything the stack prints goes to stderr so stdout holds only the JSON object."""
    if as_json:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def _emit(obj: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()


def _fail(msg: str, as_json: bool, code: int = 1) -> None:
    if as_json:
        _emit({"error": msg}, True)
    else:
        err.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def _run(fn, as_json: bool, *args, **kwargs):
    """Run a flow; expected failures become a clear message and a non-zero exit, not a traceback."""
    from sidestep.ingest.readers import SourceError

    try:
        with _quiet_stdout(as_json):
            return fn(*args, **kwargs)
    except (SourceError, ValueError, FileNotFoundError, RuntimeError) as e:
        summary = getattr(e, "summary", None)
        if summary and as_json:
            _emit({"error": str(e), **summary}, True)
            raise typer.Exit(1) from None
        _fail(str(e), as_json)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f}h" if seconds >= 3600 else f"{seconds / 60:.0f}m"


def _table(title: str, row: dict) -> None:
    t = Table(*row.keys(), title=title)
    t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    out.print(t)
