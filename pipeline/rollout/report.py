"""The evaluate stage's HTML report: tables and matplotlib plots embedded as PNG (one self-contained file).

Called by the evaluate stage with its metrics document; usable on any ``metrics.json`` it wrote
(``python -m codeground.pipeline.rollout.report metrics.json report.html``).

Plots: accuracy per benchmark (avg@k, pass@k, maj@k), a histogram of tool calls per sample, and the
recovery curve (share correct after 1..5 consecutive code errors, with how many samples each point
rests on). Metric definitions are copied from :mod:`.metrics` so the report explains itself.

What it does not do: compare runs (the quickstart's report, built by the training stages, does).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import metrics as metric_defs


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(doc: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = doc.get("benchmarks", {})
    out: list[tuple[str, str]] = []
    names = list(benches)
    if names:
        k = doc.get("samples", 1)
        keys = [key for key in (f"avg@{k}", f"pass@{k}", f"maj@{k}") if any(key in benches[b] for b in names)]
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names) + 2), 3.2))
        width = 0.8 / max(1, len(keys))
        for j, key in enumerate(keys):
            vals = [benches[b].get(key, 0.0) or 0.0 for b in names]
            ax.bar([i + j * width for i in range(len(names))], vals, width, label=key)
        ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(names))], names)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        ax.set_title("Accuracy per benchmark")
        out.append(("Accuracy per benchmark", _png(fig)))
    hist = doc.get("tool_call_histogram", {})
    if hist:
        fig, ax = plt.subplots(figsize=(5, 3))
        xs = sorted(int(x) for x in hist)
        ax.bar(xs, [hist[str(x)] if str(x) in hist else hist.get(x, 0) for x in xs])
        ax.set_xlabel("code cells executed per sample")
        ax.set_ylabel("samples")
        ax.set_title("Tool calls")
        out.append(("Tool calls per sample", _png(fig)))
    overall = doc.get("overall", {})
    pts = [(m, overall.get(f"recovery@{m}"), overall.get(f"recovery@{m}_samples", 0)) for m in metric_defs.RECOVERY_RUNS]
    pts = [(m, v, n) for m, v, n in pts if v is not None and not (isinstance(v, float) and math.isnan(v))]
    fig, ax = plt.subplots(figsize=(5, 3))
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        for m, v, n in pts:
            ax.annotate(f"n={int(n)}", (m, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no sample had a code error", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.5, 5.5)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("consecutive code errors (at least)")
    ax.set_ylabel("share ending correct")
    ax.set_title("Recovery after code errors")
    out.append(("Recovery curve", _png(fig)))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def _table(rows: dict[str, dict[str, Any]], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["", *keys])
    body = "".join(
        "<tr><th>" + html.escape(name) + "</th>" + "".join(f"<td>{_fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>"
        for name, r in rows.items()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(doc: dict[str, Any]) -> str:
    """The report as one HTML string."""
    k = doc.get("samples", 1)
    benches = doc.get("benchmarks", {})
    acc_keys = [f"avg@{k}", *(f"pass@{j}" for j in (1, 2, 4, 8, 16, 32) if j < k), f"pass@{k}", f"maj@{k}", "problems"]
    acc_keys = list(dict.fromkeys(acc_keys))
    beh_keys = ["grounding_rate", "answer_rate", "tool_calls", "tokens", "lines_of_code", "nl_share",
                "code_error_rate", "infra_retries", "infra_drops", "skipped_rows"]
    rows = {**benches, "all": doc.get("overall", {})}
    plots = "".join(f"<h2>{html.escape(t)}</h2><img src='{src}' alt='{html.escape(t)}'>" for t, src in _plots(doc))
    defs = html.escape((metric_defs.__doc__ or "").split("Definitions", 1)[-1].split("What it does not do")[0])
    model = html.escape(str(doc.get("model", "")))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>codeground evaluation</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:1em}}</style>
</head><body><h1>Evaluation</h1><p>model: <code>{model}</code> · samples per problem: {k} ·
temperature: {_fmt(doc.get('temperature', ''))}</p>
<h2>Accuracy</h2>{_table(rows, acc_keys)}
<h2>Behaviour</h2>{_table(rows, beh_keys)}
{plots}
<h2>Definitions</h2><pre>{defs}</pre></body></html>"""


def write_report(doc: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(render(doc), encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover - convenience
    write_report(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
