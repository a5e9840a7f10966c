"""The rec lab in `sidestep report`: test NDCG@10 of frozen and learned codes per setting, beside the controls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def lab_rec_figure(data: Mapping[str, Any], add: Callable, figure: Callable, grey: str) -> None:
    """One horizontal bar chart of the latest rec lab run: per setting (in-domain per domain, transfer,
    no-transfer, zero-shot) the arms' test NDCG@10 (mean ± std over seeds) and the controls (grey)."""
    run = data.get("lab_rec")
    if not run:
        return
    res: dict[tuple[str, str], dict[str, dict[str, float]]] = {}  # (setting, domain) -> arm/control -> metric
    for r in run.get("results", []):
        parts = r["metric"].split("/")
        if len(parts) != 3 or r["section"] == "delta":
            continue
        setting, domain, metric = parts
        res.setdefault((setting, domain), {}).setdefault(r["estimator"], {})[metric] = r["value"]
    rows = []
    for (setting, domain), by in sorted(res.items()):
        for name, m in sorted(by.items()):
            mean = m.get("ndcg@10_mean", m.get("ndcg@10"))
            if mean is None:
                continue
            color = grey if "ndcg@10" in m else ("C2" if name == "frozen" else "C0")
            rows.append((f"{setting} {domain}: {name}", mean, m.get("ndcg@10_std", 0.0), color))
    if not rows:
        return
    fig = figure(8.0, 0.5 + 0.3 * len(rows))
    ax = fig.add_subplot()
    ys = range(len(rows))
    ax.barh(ys, [r[1] for r in rows], xerr=[r[2] for r in rows], color=[r[3] for r in rows], capsize=3)
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("test NDCG@10 (mean ± std over seeds; grey: untrained controls)")
    ax.grid(axis="x", alpha=0.3)
    add("lab-rec", f"rec lab run {run['run_id']}: frozen OPQ/PQ codes (green) against codes learned end to end "
        "(blue), in-domain and table-only transfer", fig)
