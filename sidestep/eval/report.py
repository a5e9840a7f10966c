"""The report: one self-contained HTML page of figures drawn from what the pipeline recorded.

``render_report(data)`` takes plain rows (the warehouse's ``report_data``, the codebook's usage, the last
nightly run, latency samples) and returns the page and the names of the figures it drew. Figures are
matplotlib SVG inlined in the page (text drawn as paths, so no font is needed); nothing is loaded from
anywhere else, and a Content-Security-Policy says so to the browser. A section without data shows a short
note instead of a figure. matplotlib is imported here only, on the first figure.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["render_report", "latency_series", "SECTIONS"]

# recommendation variants that are controls (what a learned variant must beat), drawn in grey
REC_CONTROLS = ("popularity", "text_zero_shot", "shuffled_codes", "random", "identity")
_GAIN, _LOSS, _GREY = "#2a9d5c", "#c8553d", "#9a9a9a"


@dataclass
class Section:
    key: str
    title: str
    about: str
    figures: list[tuple[str, str, str]] = field(default_factory=list)  # (name, caption, svg)
    notes: list[str] = field(default_factory=list)


# -- figures ------------------------------------------------------------------------------------------

def _figure(width: float = 7.5, height: float = 3.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig, prefix: str) -> str:
    """The figure as an inline <svg> element whose ids are unique in the page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    ids = set(re.findall(r'\sid="([^"]+)"', text))
    text = re.sub(r'(\sid=")([^"]+)"', lambda m: f'{m[1]}{prefix}-{m[2]}"', text)
    text = re.sub(r'((?:xlink:)?href="#)([^"]+)"',
                  lambda m: f'{m[1]}{prefix}-{m[2]}"' if m[2] in ids else m[0], text)
    return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m[1]})" if m[1] in ids else m[0], text)


def _short(version: str, n: int = 22) -> str:
    return version if len(version) <= n else version[: n - 1] + "…"


def _eval_over_time(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    runs = data.get("eval_runs") or []
    if not runs:
        sec.notes.append("No data: no evaluation run is stored (`sidestep eval DATASET --domain D`).")
    for dom in sorted({r["domain"] for r in runs}):
        mine = [r for r in runs if r["domain"] == dom]
        fig = _figure(max(6.0, 1.1 * len(mine) + 3), 3.6)
        ax = fig.add_subplot()
        x = list(range(len(mine)))
        for key, label in (("ndcg_10", "nDCG@10"), ("mrr_10", "MRR@10"), ("recall_100", "Recall@100")):
            ax.plot(x, [r[key] or 0.0 for r in mine], marker="o", label=label)
        ax.set_xticks(x, [f"{_short(r['index_version'])}\n{r['started_at']:%Y-%m-%d %H:%M}" for r in mine],
                      rotation=20, ha="right", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("mean over queries")
        ax.set_title(f"{dom}: main run of each evaluation, by index version and time", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        add(f"eval-metrics-{dom}", f"{dom}: {len(mine)} evaluation run(s); the last is {mine[-1]['run_id']}", fig)


def _query_deltas(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    deltas = [d for d in data.get("query_deltas") or [] if d["rows"]]
    if not deltas:
        sec.notes.append("No data: a domain needs two evaluation runs to compare.")
    for d in deltas:
        rows = sorted(d["rows"], key=lambda r: (r["delta"], r["query_id"]))
        gains, losses = sum(r["delta"] > 0 for r in rows), sum(r["delta"] < 0 for r in rows)
        fig = _figure(max(6.0, min(12.0, 0.25 * len(rows) + 3)), 3.4)
        ax = fig.add_subplot()
        vals = [r["delta"] for r in rows]
        ax.bar(range(len(rows)), vals, color=[_GAIN if v > 0 else _LOSS if v < 0 else _GREY for v in vals],
               width=0.8)
        ax.axhline(0, color="black", lw=0.8)
        if len(rows) <= 40:
            ax.set_xticks(range(len(rows)), [r["query_id"] for r in rows], rotation=60, ha="right", fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"{len(rows)} queries, sorted by change")
        ax.set_ylabel("nDCG@10 after − before")
        ax.set_title(f"{d['domain']}: {gains} queries gained, {losses} lost, {len(rows) - gains - losses} unchanged",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        add(f"query-deltas-{d['domain']}", f"before = {d['before']}, after = {d['after']}", fig)


def _curves(rows: list[dict], by: Iterable[str]) -> dict[tuple, dict[str, list[tuple[int, float]]]]:
    """Rows (…, epoch, metric, value) grouped by the ``by`` columns, then by metric: sorted (epoch, value)."""
    out: dict[tuple, dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        out.setdefault(tuple(r[b] for b in by), {}).setdefault(r["metric"], []).append((r["epoch"], r["value"]))
    return {k: {m: sorted(v) for m, v in ms.items()} for k, ms in out.items()}


def _plot_curves(metrics: dict[str, list[tuple[int, float]]], title: str, prefix: str = ""):
    """Losses on the left axes, everything else (validation metrics) on the right; seconds are left out."""
    fig = _figure(8.5, 3.2)
    left, right = fig.subplots(1, 2)
    for name, pts in sorted(metrics.items()):
        if name.endswith("seconds"):
            continue
        ax = left if "loss" in name else right
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=prefix + name)
    for ax, what in ((left, "loss"), (right, "validation")):
        ax.set_xlabel("epoch")
        ax.set_title(what, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def _training(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    verifier = _curves(data.get("verifier_curves") or [], ("domain", "verifier_version"))
    rec = _curves(data.get("rec_curves") or [], ("domain", "variant"))
    if not verifier and not rec:
        sec.notes.append("No data: no verifier (`sidestep train-verifier`) or lookup-table training "
                         "(`sidestep eval-rec`) curve is stored.")
    for (dom, version), metrics in verifier.items():
        add(f"verifier-curve-{dom}", f"{dom}: verifier {version}; adapter_* are the query adapter's epochs "
            "(epoch 0: the identity)", _plot_curves(metrics, f"{dom}: verifier and query adapter"))
    for (dom, variant), metrics in rec.items():
        add(f"rec-curve-{dom}-{variant}", f"{dom}: lookup tables, variant {variant} (its latest eval-rec)",
            _plot_curves(metrics, f"{dom}: lookup-table training ({variant})"))


def _codebook(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    book = data.get("codebook")
    diag = {d: m for d, m in (book or {}).get("diagnostics", {}).items() if m.get("entropy_per_position")}
    if not diag:
        sec.notes.append("No data: no codebook with per-position usage is published (domains with interactions "
                         "get one at reindex).")
        return
    fig = _figure(8.0, 3.4)
    ax = fig.add_subplot()
    width = 0.8 / len(diag)
    top = 0.0
    for i, (dom, m) in enumerate(sorted(diag.items())):
        ent = m["entropy_per_position"]
        ax.bar([p + i * width - 0.4 + width / 2 for p in range(len(ent))], ent, width=width,
               label=f"{dom}: {m.get('items', '?')} items, {m.get('dead_codewords', 0):.0f} dead codewords, "
                     f"{m.get('colliding_items', 0):.0f} colliding items")
        top = max(top, float(m.get("entropy_bits_max") or 0.0), max(ent))
    if top:
        ax.axhline(top, color="black", ls="--", lw=0.8)
        ax.text(0, top, " uniform use (log2 M)", va="bottom", fontsize=7)
    ax.set_ylim(0, top * 1.15 or 1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("code position")
    ax.set_ylabel("codeword entropy (bits)")
    ax.set_title(f"codebook {book['version']}: codeword usage per code position", fontsize=10)
    fig.legend(fontsize=7, loc="outside lower center")
    add("codebook-usage", f"{book.get('positions')} positions × {book.get('codewords')} codewords; "
        "low entropy = few codewords carry the items", fig)


def _rec_metrics(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    from matplotlib.patches import Patch

    rows = data.get("rec_metrics") or []
    if not rows:
        sec.notes.append("No data: no recommendation evaluation is stored (`sidestep eval-rec DATASET --domain D`).")
    for dom in sorted({r["domain"] for r in rows}):
        mine = [r for r in rows if r["domain"] == dom]
        protocols = sorted({r["protocol"] for r in mine}, key=lambda p: p != "full")
        fig = _figure(8.5, 3.2 * len(protocols))
        axes = fig.subplots(len(protocols), 1, squeeze=False)[:, 0]
        for ax, protocol in zip(axes, protocols, strict=True):
            part = sorted((r for r in mine if r["protocol"] == protocol), key=lambda r: -(r["ndcg_10"] or 0))
            names = [r["variant"] for r in part]
            for j, key in enumerate(("ndcg_10", "recall_10")):
                colors = [_GREY if n.split("_codes_only")[0] in REC_CONTROLS else f"C{j}" for n in names]
                ax.bar([i + (j - 0.5) * 0.4 for i in range(len(part))], [r[key] or 0.0 for r in part], width=0.4,
                       color=colors, alpha=1.0 if j == 0 else 0.6)
            ax.set_xticks(range(len(part)), names, rotation=15, ha="right", fontsize=8)
            ax.set_title(f"{dom} ({protocol} ranking, {part[0]['n_users']} test users); controls in grey",
                         fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(handles=[Patch(color="C0", label="NDCG@10"), Patch(color="C1", alpha=0.6, label="Recall@10"),
                               Patch(color=_GREY, label="control")], fontsize=7, loc="upper left",
                      bbox_to_anchor=(1.0, 1.0))
        add(f"rec-metrics-{dom}", f"{dom}: eval-rec {mine[0]['group_id']} (left bar NDCG@10, right Recall@10)", fig)


def _lab(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    _lab_planted(data, sec, add)
    _lab_retrieval(data, sec, add)
    from sidestep.eval.report_labrec import lab_rec_figure

    lab_rec_figure(data, add, _figure, _GREY)


def _lab_retrieval(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    """Per corpus of the latest retrieval lab run: validation nDCG@10 per step of every estimator (mean over
    seeds, band one std) beside the untrained controls, and test nDCG@10 mean ± std per estimator."""
    run = data.get("lab_retrieval")
    if not run:  # the planted part notes an empty lab; a lab without a retrieval run needs no second note
        return
    res: dict[str, dict[str, dict[str, dict[str, float]]]] = {}  # dataset -> section -> ranker -> metric
    for r in run.get("results", []):
        ds, _, metric = r["metric"].partition("/")
        res.setdefault(ds, {}).setdefault(r["section"], {}).setdefault(r["estimator"], {})[metric] = r["value"]
    curves: dict[str, dict[str, list]] = {}
    for r in run.get("curve", []):
        ds, _, metric = r["metric"].partition("/")
        if metric == "val_ndcg@10":
            curves.setdefault(ds, {}).setdefault(r["estimator"], []).append((r["step"], r["value"], r["std"] or 0.0))
    for ds in sorted(set(res) | set(curves)):
        ctl = res.get(ds, {}).get("control", {})
        if curves.get(ds):
            fig = _figure(8.0, 3.6)
            ax = fig.add_subplot()
            for i, (name, pts) in enumerate(sorted(curves[ds].items())):
                pts.sort()
                x, y, sd = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
                ax.plot(x, y, marker=".", lw=2.4 if name == "sidestep" else 1.2, color=f"C{i}", label=name)
                ax.fill_between(x, [a - b for a, b in zip(y, sd, strict=True)],
                                [a + b for a, b in zip(y, sd, strict=True)], color=f"C{i}", alpha=0.12)
            for name, style in (("identity", ":"), ("best_untrained", "--")):
                if "val_ndcg@10" in ctl.get(name, {}):
                    ax.axhline(ctl[name]["val_ndcg@10"], color=_GREY, ls=style, lw=1.2, label=f"{name} (untrained)")
            ax.set_xlabel("training step")
            ax.set_ylabel("validation nDCG@10")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=3)
            add(f"lab-retrieval-curves-{ds}", f"{ds}: each estimator training the same query-side scorer through the "
                f"hard top 10 (lab run {run['run_id']}); mean over seeds, band ± one std", fig)
        est = res.get(ds, {}).get("result", {})
        rows = [(n, r.get("ndcg@10_mean", math.nan), r.get("ndcg@10_std", 0.0), r.get("no_overlap_ndcg@10_mean"),
                 "C2" if n == "sidestep" else "C0") for n, r in est.items()]
        rows += [(f"{n} (untrained)", c.get("ndcg@10", math.nan), 0.0, c.get("no_overlap_ndcg@10"), _GREY)
                 for n, c in ctl.items() if n in ("identity", "best_untrained")]
        if not rows:
            continue
        rows.sort(key=lambda r: -r[1] if r[1] == r[1] else math.inf)
        fig = _figure(8.0, 0.5 + 0.32 * len(rows))
        ax = fig.add_subplot()
        ys = range(len(rows))
        ax.barh(ys, [r[1] for r in rows], xerr=[r[2] for r in rows], color=[r[4] for r in rows], capsize=3)
        ax.scatter([r[3] if r[3] is not None else math.nan for r in rows], ys, marker="D", color="k", s=14,
                   zorder=3, label="no-overlap test queries")
        ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=8)
        ax.invert_yaxis()
        lo = min((r[1] for r in rows if r[1] == r[1]), default=0.0)
        ax.set_xlim(max(0.0, lo - 0.1), 1.0)
        ax.set_xlabel("test nDCG@10 (mean ± std over seeds)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        add(f"lab-retrieval-test-{ds}", f"{ds}: held-out nDCG@10 of each estimator's best-validation checkpoint "
            "beside the untrained controls (grey); diamonds: the test queries with no training overlap", fig)


def _lab_planted(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    lab = data.get("lab")
    head = {}
    for r in (lab or {}).get("headline", []):
        head.setdefault(r["estimator"], {})[r["metric"]] = r["value"]
    if not head:
        sec.notes.append("No data: no planted gradient-lab run is stored (`sidestep lab planted`).")
        return
    names = sorted(head, key=lambda n: head[n].get("bias", math.inf))
    fig = _figure(8.5, 3.4)
    left, right = fig.subplots(1, 2)
    for ax, metric, log in ((left, "bias", False), (right, "variance", True)):
        vals = [head[n].get(metric, math.nan) for n in names]
        ax.barh(range(len(names)), vals, color=["C2" if n == "sidestep" else "C0" for n in names])
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{metric} against the exact gradient", fontsize=9)
        if log and all(v > 0 for v in vals if v == v):
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"gradient lab {lab['run_id']} ({lab['task']})", fontsize=10)
    add("lab-bias-variance", "per estimator: bias (norm of the mean error) and variance of its gradient estimates",
        fig)
    curve: dict[str, list[tuple[int, float]]] = {}
    for r in lab.get("curve", []):
        curve.setdefault(r["estimator"], []).append((r["step"], r["value"]))
    if not curve:
        sec.notes.append("No learning curves in the latest lab run.")
        return
    fig = _figure(8.0, 3.4)
    ax = fig.add_subplot()
    for name, pts in sorted(curve.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=2.2 if name == "sidestep" else 1.2,
                label=name)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("expected loss (exact)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    add("lab-curves", "each estimator driving the same optimiser: exact expected loss per step (mean over seeds)", fig)


def _longdoc(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    run = data.get("longdoc")
    groups: dict[str, dict[str, dict[str, float]]] = {}  # scope -> ranker -> recall@k -> value
    for r in (run or {}).get("metrics", []):
        parts = r["metric"].split(".")
        if len(parts) >= 2 and parts[-1].startswith("recall@") and not any(p.isdigit() for p in parts):
            scope = ".".join(parts[:-2]) or "all"
            groups.setdefault(scope, {}).setdefault(parts[-2], {})[parts[-1]] = r["value"]
    if not groups:
        sec.notes.append("No data: no long-document evaluation is stored (`sidestep eval-longdoc FILE.jsonl`).")
        return
    fig = _figure(8.0, 3.0 * len(groups))
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (scope, rankers) in zip(axes, sorted(groups.items()), strict=True):
        ks = sorted({k for m in rankers.values() for k in m}, key=lambda k: int(k.split("@")[1]))
        width = 0.8 / len(rankers)
        for i, (ranker, m) in enumerate(sorted(rankers.items())):
            ax.bar([j + i * width - 0.4 + width / 2 for j in range(len(ks))], [m.get(k, 0.0) for k in ks],
                   width=width, label=ranker)
        ax.set_xticks(range(len(ks)), ks)
        ax.set_ylim(0, 1.02)
        ax.set_title(scope, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    add("longdoc", f"evidence-chunk recall, run {run['run_id']}", fig)


def latency_series(obj: Any, path: str = "") -> dict[str, list[float]]:
    """Latency samples (ms) in a benchmark's JSON: a list of numbers, or every list of numbers under a key
    named ``latency_ms`` or ``samples_ms``, named by where it sits (``http_k10``)."""
    def numbers(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v)

    if numbers(obj):
        return {path or "latency": [float(x) for x in obj]}
    out: dict[str, list[float]] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("latency_ms", "samples_ms") and numbers(v):
                out[path or "latency"] = [float(x) for x in v]
            elif isinstance(v, (dict, list)) and not numbers(v):
                out.update(latency_series(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list)):
                out.update(latency_series(v, f"{path}.{i}" if path else str(i)))
    return out


def _latency(data: Mapping[str, Any], sec: Section, add: Callable) -> None:
    lat = data.get("latency") or {}
    series = lat.get("series") or {}
    if not series:
        sec.notes.append(f"No data: {lat.get('note') or 'no latency samples given'} (`--latency-json FILE` or "
                         "`[report] latency_json`: a benchmark JSON with `latency_ms` lists).")
        return
    fig = _figure(8.0, 3.4)
    ax = fig.add_subplot()
    for i, (name, vals) in enumerate(sorted(series.items())):
        s = sorted(vals)
        p50, p99 = s[len(s) // 2], s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
        ax.hist(s, bins=min(60, max(10, len(s) // 5)), histtype="step", lw=1.5, color=f"C{i}",
                label=f"{name}: n={len(s)}, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        ax.axvline(p50, color=f"C{i}", ls="--", lw=0.8)
        ax.axvline(p99, color=f"C{i}", ls=":", lw=0.8)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    add("latency", f"from {lat.get('source', 'the given samples')}; dashed p50, dotted p99", fig)


SECTIONS: tuple[tuple[str, str, str, Callable], ...] = (
    ("eval", "Retrieval quality per index version", "nDCG@10, MRR@10 and Recall@100 of each evaluation's main run "
     "(the configuration that ran), in time order, labelled by the index version it searched.", _eval_over_time),
    ("deltas", "Per-query gains and losses", "The change in each query's nDCG@10 between a domain's two latest "
     "evaluation runs, sorted: green bars gained, red lost.", _query_deltas),
    ("training", "Training curves", "Per epoch, as the warehouse stores them: the verifier and its query adapter, "
     "and the lookup tables of the latest recommendation evaluation.", _training),
    ("codebook", "Codebook usage per code position", "How evenly the items use the codewords of each position "
     "of the published codebook (entropy in bits; the dashed line is uniform use).", _codebook),
    ("rec", "Recommendation metrics per variant", "The latest eval-rec of each domain: every variant beside its "
     "controls (grey), on the test split.", _rec_metrics),
    ("lab", "The gradient lab", "Bias and variance of each gradient estimator against the exact gradient, and the "
     "loss each reaches when it drives the optimiser; on retrieval, each estimator's learning curve and held-out "
     "quality beside the untrained controls.", _lab),
    ("longdoc", "Long documents", "Evidence-chunk recall of the latest eval-longdoc: bag of chunks against "
     "map-conditioned retrieval.", _longdoc),
    ("latency", "Query latency", "The latency histogram of the last benchmark whose samples were given.", _latency),
)

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#f6f6f4}
main{max-width:980px;margin:0 auto;padding:24px}
header{margin-bottom:8px} h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:0 0 4px}
.meta{color:#555;font-size:13px} nav{font-size:13px;margin:10px 0 18px} nav a{margin-right:12px;color:#2456a6}
section{background:#fff;border:1px solid #e2e2de;border-radius:8px;padding:16px 18px;margin:0 0 18px}
.about{color:#444;margin:0 0 10px} figure{margin:10px 0 16px} figcaption{color:#555;font-size:12.5px}
figure svg{max-width:100%;height:auto;display:block}
.note{background:#f3f1ea;border-left:4px solid #c9b458;padding:8px 12px;margin:8px 0;color:#5a4f1a}
"""


def render_report(data: Mapping[str, Any], *, title: str = "sidestep report", subtitle: str = "",
                  domain: str | None = None) -> tuple[str, list[str], dict[str, list[str]]]:
    """The page, the names of the figures drawn, and the notes of each section (a section without data
    has a note instead of figures; one whose drawing failed says so in its note)."""
    sections: list[Section] = []
    names: list[str] = []
    for key, heading, about, build in SECTIONS:
        sec = Section(key, heading, about)

        def add(name: str, caption: str, fig, sec: Section = sec) -> None:
            sec.figures.append((name, caption, _svg(fig, f"f{len(names)}")))
            names.append(name)

        try:
            build(data, sec, add)
        except Exception as e:  # a figure must never take the page down: say what went wrong instead
            sec.notes.append(f"Could not draw this section: {type(e).__name__}: {e}")
        sections.append(sec)
    return _page(title, subtitle, domain, data.get("nightly"), sections), names, \
        {s.key: s.notes for s in sections if s.notes}


def _nightly_line(n: Mapping[str, Any] | None) -> str:
    if not n:
        return "No nightly reindex recorded."
    failed = ", ".join(n.get("failed") or {}) or "none"
    return (f"Last nightly reindex: {n.get('outcome')} at {n.get('started_at')} in {n.get('seconds')} s; "
            f"published {', '.join(n.get('published') or []) or 'nothing'}; failed: {failed}; "
            f"{n.get('encoded', 0)} chunks encoded, {n.get('quarantined', 0)} records quarantined.")


def _page(title: str, subtitle: str, domain: str | None, nightly: Any, sections: list[Section]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
             'style-src \'unsafe-inline\'; img-src data:">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             '<link rel="icon" href="data:,">', f"<title>{e(title)}</title>", f"<style>{_CSS}</style>",
             "</head><body><main><header>", f"<h1>{e(title)}</h1>",
             f'<div class="meta">{e(subtitle)}{" · domain " + e(domain) if domain else ""}</div>',
             f'<div class="meta">{e(_nightly_line(nightly))}</div></header>',
             "<nav>" + "".join(f'<a href="#{s.key}">{e(s.title)}</a>' for s in sections) + "</nav>"]
    for s in sections:
        parts.append(f'<section id="{s.key}"><h2>{e(s.title)}</h2><p class="about">{e(s.about)}</p>')
        parts += [f'<figure data-name="{e(name)}">{svg}<figcaption>{e(cap)}</figcaption></figure>'
                  for name, cap, svg in s.figures]
        parts += [f'<p class="note">{e(n)}</p>' for n in s.notes]
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
