"""The one-screen summary ``codeground run`` prints at the end: stages, phases, metrics, artifacts."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from . import spec as api
from .store import ArtifactStore

# Metrics worth a column, in order of preference; others are listed after.
KEY_METRICS = ("accuracy", "avg@k", "pass@k", "reward", "grounding_rate", "kept", "loss", "tool_calls")


def print_summary(run: api.TrainingRun, status: api.TrainingRunStatus, store: ArtifactStore,
                  console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"TrainingRun {run.metadata.name}: {status.phase}", title_justify="left")
    table.add_column("stage")
    table.add_column("type")
    table.add_column("phase")
    table.add_column("metrics")
    table.add_column("artifact")
    types = {s.name: s.type for s in run.spec.stages}
    for st in status.stages:
        keys = [k for k in KEY_METRICS if k in st.metrics] + sorted(k for k in st.metrics if k not in KEY_METRICS)
        metrics = ", ".join(f"{k}={st.metrics[k]:.4g}" for k in keys[:6])
        color = {"Succeeded": "green", "Failed": "red", "Running": "yellow"}.get(st.phase, "white")
        table.add_row(st.name, types.get(st.name, "?"), f"[{color}]{st.phase}[/]", metrics or st.message or "",
                      st.artifact_uri or "")
    console.print(table)
    for st in status.stages:
        if st.phase == "Failed" and st.message:
            console.print(f"[red]stage {st.name} failed:[/] {st.message}")
    console.print(f"artifacts: {store.root_uri}/{run.metadata.name}/  (status.json, <stage>/manifest.json)")
