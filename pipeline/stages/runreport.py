"""The run-level report of a finished TrainingRun: did training help? (HTML with plots + a terminal summary).

Called by ``hack/quickstart.sh`` after ``codeground run`` and from the command line:
``python -m codeground.pipeline.stages.runreport RUNS_DIR RUN`` (``RUNS_DIR`` is the artifact store:
a folder or s3:// URI). Reads only committed artifacts: ``status.json``, every stage's manifest, the
grpo stages' ``metrics.jsonl``, the sft stages' ``metrics.jsonl`` and the evaluate stages'
``metrics.json``. Writes ``<run>/report.html`` into the store and prints a one-screen summary.

Plots: reward (and accuracy) per GRPO step with phase boundaries, SFT loss per step, held-out accuracy
and grounding rate per evaluate stage (in spec order, so base → sft → grpo reads left to right), and
tool calls per problem for each evaluate stage.

What it does not do: judge significance (the quickstart's 24-problem greedy evaluation moves in steps of ~4 points).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import sys
from typing import Any

from ..store import ArtifactStore, open_store


def collect(store: ArtifactStore, run: str) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    status = json.loads(store.get_bytes(f"{run}/status.json"))
    doc: dict[str, Any] = {"run": run, "phase": status.get("phase"), "stages": []}
    for st in status.get("stages", []):
        manifest = store.read_manifest(run, st["name"])
        entry: dict[str, Any] = {"name": st["name"], "phase": st.get("phase"), "metrics": st.get("metrics", {}),
                                 "type": manifest.type if manifest else None, "seconds": _seconds(st)}
        if manifest is not None:
            for role in ("metrics",):
                rel = manifest.outputs.get(role)
                key = f"{run}/{st['name']}/{rel}" if rel else None
                if rel and key and store.exists(key):
                    data = store.get_bytes(key).decode()
                    if rel.endswith(".jsonl"):
                        entry["rows"] = [json.loads(x) for x in data.splitlines() if x.strip()]
                    else:
                        entry["doc"] = json.loads(data)
        doc["stages"].append(entry)
    return doc


def _seconds(st: dict[str, Any]) -> float | None:
    from datetime import datetime

    try:
        a = datetime.fromisoformat(st["startTime"].replace("Z", "+00:00"))
        b = datetime.fromisoformat(st["completionTime"].replace("Z", "+00:00"))
    except (KeyError, AttributeError, ValueError):
        return None
    return (b - a).total_seconds()


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(doc: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    for st in doc["stages"]:
        rows = st.get("rows") or []
        if st["type"] == "grpo" and rows:
            fig, ax = plt.subplots(figsize=(6, 3))
            steps = [r["step"] for r in rows]
            ax.plot(steps, [r["reward"] for r in rows], marker="o", label="reward")
            ax.plot(steps, [r.get("grounded", 0) for r in rows], ls="--", label="grounded share")
            for r0, r1 in itertools.pairwise(rows):
                if r1.get("phase") != r0.get("phase"):
                    ax.axvline(r0["step"] + 0.5, color="grey", lw=0.8)
            ax.set_xlabel("GRPO step")
            ax.set_ylim(-0.05, 1.05)
            ax.legend()
            out.append((f"Reward per step ({st['name']}; vertical lines: curriculum phases)", _png(fig)))
        if st["type"] == "sft" and rows:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
            ax.set_xlabel("SFT step")
            ax.set_ylabel("loss (model tokens)")
            out.append((f"SFT loss ({st['name']})", _png(fig)))
    evals = [s for s in doc["stages"] if s["type"] == "evaluate" and "accuracy" in s["metrics"]]
    if evals:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = [s["name"] for s in evals]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [s["metrics"]["accuracy"] for s in evals], width=0.4, label="accuracy")
        ax.bar([i + 0.2 for i in x], [s["metrics"].get("grounding_rate", 0.0) for s in evals], width=0.4,
               label="grounding rate")
        ax.set_xticks(list(x), names)
        ax.set_ylim(0, 1)
        ax.legend()
        out.append(("Held-out accuracy and grounding per evaluate stage", _png(fig)))
        fig, ax = plt.subplots(figsize=(6, 3))
        width = 0.8 / len(evals)
        for j, s in enumerate(evals):
            hist = {int(k): v for k, v in (s.get("doc", {}).get("tool_call_histogram") or {}).items()}
            total = sum(hist.values()) or 1
            ax.bar([k + j * width for k in sorted(hist)], [hist[k] / total for k in sorted(hist)], width=width,
                   label=s["name"])
        ax.set_xlabel("tool calls per problem")
        ax.set_ylabel("share of samples")
        ax.legend()
        out.append(("Tool calls per problem", _png(fig)))
    return out


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(stage, type, headline) per stage, for the terminal and the HTML table."""
    rows = []
    for st in doc["stages"]:
        m, t = st["metrics"], st["type"] or "?"
        if t == "evaluate":
            head = (f"accuracy {m.get('accuracy', float('nan')):.1%}  grounded {m.get('grounding_rate', float('nan')):.1%}  "
                    f"tool calls {m.get('tool_calls', float('nan')):.2f}")
        elif t == "grpo":
            head = (f"reward {m.get('reward_first', float('nan')):.2f} → {m.get('reward', float('nan')):.2f}  "
                    f"{m.get('seconds_per_step', float('nan')):.1f} s/step")
        elif t == "sft":
            head = (f"loss {m.get('first_loss', float('nan')):.3f} → {m.get('final_loss', float('nan')):.3f}  "
                    f"{int(m.get('examples', 0))} examples  {m.get('seconds_per_step', float('nan')):.1f} s/step")
        elif t == "distill":
            head = ", ".join(f"{k}={v:.3g}" for k, v in list(m.items())[:4])
        else:
            head = st.get("phase") or ""
        secs = f"{st['seconds']:.0f}s" if st.get("seconds") is not None else ""
        rows.append((st["name"], f"{t} {secs}", head))
    return rows


def render(doc: dict[str, Any]) -> str:
    table = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                    for a, b, c in summary_rows(doc))
    figs = "".join(f"<h3>{html.escape(t)}</h3><img src='data:image/png;base64,{p}'/>" for t, p in plots(doc))
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(doc['run'])}</title>"
            "<style>body{font-family:sans-serif;max-width:900px;margin:auto}td{padding:2px 10px}</style>"
            f"<h1>TrainingRun {html.escape(doc['run'])}: {html.escape(str(doc['phase']))}</h1>"
            f"<table><tr><th>stage</th><th>type</th><th>result</th></tr>{table}</table>{figs}")


def build(store: ArtifactStore, run: str) -> str:
    """Write ``<run>/report.html`` to the store, print the summary; returns the report's URI."""
    from rich.console import Console
    from rich.table import Table

    doc = collect(store, run)
    store.put_bytes(f"{run}/report.html", render(doc).encode())
    table = Table(title=f"{run}: {doc['phase']}", title_justify="left")
    for col in ("stage", "type", "result"):
        table.add_column(col)
    for row in summary_rows(doc):
        table.add_row(*row)
    Console().print(table)
    return store.uri(f"{run}/report.html")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m codeground.pipeline.stages.runreport RUNS_DIR RUN", file=sys.stderr)
        return 2
    print(f"report: {build(open_store(args[0]), args[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
