"""Benchmark the operator on the test bed: apply → first Job latency, and 200 runs on 100 GPU nodes.

    python bench/operator.py                      # writes bench/results/operator.json
    python bench/operator.py --runs 50 --nodes 20 --samples 10   # a quicker look

Starts its own control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok with
``--nodes`` fake nodes × 8 ``nvidia.com/gpu``), applies the CRDs, runs ``codeground operator run``
as a child process, then:

1. latency: applies ``--samples`` one-stage TrainingRuns one after another and times each from the
   create call returning to the first Job appearing on a watch (p50/p99);
2. burst: applies ``--runs`` TrainingRuns as fast as 8 client threads can and times until every
   run's first Job exists (and its pod is bound to a node);
3. reads the operator's reconcile error counter from its /metrics and samples its RSS throughout.

Targets (issue 8): p50 ≤ 1 s, zero reconcile errors, RSS ≤ 200 MB. What it does not measure: real
kubelets (kwok marks pods Running without running containers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml

from codeground.operator.testbed import ControlPlane, find_binaries, free_port

REPO = Path(__file__).resolve().parents[1]


def run_doc(name: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "codeground.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"model": {"name": "Qwen/Qwen3-0.6B"},
                     "datasets": [{"name": "arith", "source": "builtin:arith_train"}],
                     "stages": [{"name": "sft", "type": "sft", "resources": {"gpus": gpus, "cpu": "4", "memory": "16Gi"}}]}}


class JobWatch:
    """Records when each Job (and its first bound pod) is first seen in a namespace."""

    def __init__(self, api: Any, namespace: str):
        from kubernetes import client, watch

        self.batch, self.core, self.ns = client.BatchV1Api(api), client.CoreV1Api(api), namespace
        self.jobs: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self._stop = threading.Event()
        self._watch = watch
        self.threads = [threading.Thread(target=self._jobs, daemon=True), threading.Thread(target=self._pods, daemon=True)]
        for t in self.threads:
            t.start()

    def _jobs(self) -> None:
        while not self._stop.is_set():
            for ev in self._watch.Watch().stream(self.batch.list_namespaced_job, self.ns, timeout_seconds=5):
                self.jobs.setdefault(ev["object"].metadata.labels.get("codeground.dev/run"), time.monotonic())

    def _pods(self) -> None:
        while not self._stop.is_set():
            for ev in self._watch.Watch().stream(self.core.list_namespaced_pod, self.ns, timeout_seconds=5):
                pod = ev["object"]
                if pod.spec.node_name:
                    self.bound.setdefault((pod.metadata.labels or {}).get("codeground.dev/run"), time.monotonic())

    def stop(self) -> None:
        self._stop.set()


def metric_sum(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


def _finite(x: float) -> float | None:
    return round(x, 3) if x != float("inf") else None


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main(args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes import client

    bin_dir = find_binaries(("etcd", "kube", "kwok"))
    work = Path(tempfile.mkdtemp(prefix="codeground-bench-"))
    with ControlPlane(bin_dir, work / "cluster", gpu_nodes=args.nodes, gpus_per_node=8, cpu_nodes=0) as cp:
        for p in sorted((REPO / "crds").glob("*.yaml")):
            cp.kubectl("apply", "--server-side", "-f", str(p))
        for p in sorted((REPO / "crds").glob("*.yaml")):
            cp.kubectl("wait", "--for=condition=Established", f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}")
        cp.kubectl("create", "namespace", "bench")
        cp.wait_for_default_serviceaccount("bench")
        port = free_port()
        log = (work / "operator.log").open("wb")
        op = subprocess.Popen([sys.executable, "-c", "from codeground.pipeline.cli import main; main()", "operator", "run",
                               "--all-namespaces", f"--kubeconfig={cp.kubeconfig}", f"--metrics-port={port}", "--liveness="],
                              stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO / "bench"))
        proc = psutil.Process(op.pid)
        peak = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        try:
            from kubernetes import config as kconfig

            api = kconfig.new_client_from_config(config_file=str(cp.kubeconfig))
            custom = client.CustomObjectsApi(api)
            watch = JobWatch(api, "bench")
            time.sleep(3)  # operator up and watching
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    metric_sum(port, "codeground_operator_reconciles_total")
                    break
                except OSError:
                    time.sleep(0.5)

            def create(name: str, gpus: int) -> float:
                custom.create_namespaced_custom_object("codeground.dev", "v1alpha1", "bench", "trainingruns", run_doc(name, gpus))
                return time.monotonic()

            def wait(names: list[str], timeout: float, table: dict[str, float]) -> None:
                end = time.monotonic() + timeout
                while time.monotonic() < end and not all(n in table for n in names):
                    time.sleep(0.01)

            # 1. sequential latency
            lat = []
            for i in range(args.samples):
                name = f"lat-{i}"
                t0 = create(name, 1)
                wait([name], 30, watch.jobs)
                if name in watch.jobs:
                    lat.append(watch.jobs[name] - t0)
            # free the GPUs the latency runs hold before the burst (the garbage collector deletes their pods)
            cp.kubectl("delete", "trainingruns", "--all", "-n", "bench", "--wait=true")
            end = time.monotonic() + 120
            while time.monotonic() < end and watch.core.list_namespaced_pod("bench").items:
                time.sleep(0.5)
            # 2. burst
            names = [f"burst-{i}" for i in range(args.runs)]
            gpus = max(1, min(8, args.nodes * 8 // max(1, args.runs)))
            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                created = dict(zip(names, pool.map(lambda n: create(n, gpus), names), strict=True))
            applied = time.monotonic() - t0
            wait(names, 600, watch.jobs)
            all_jobs = max(watch.jobs.get(n, float("inf")) for n in names) - t0
            wait(names, 120, watch.bound)
            all_bound = max(watch.bound.get(n, float("inf")) for n in names) - t0
            burst_lat = [watch.jobs[n] - created[n] for n in names if n in watch.jobs]
            time.sleep(2)
            errors = metric_sum(port, "codeground_operator_reconcile_errors_total")
            reconciles = metric_sum(port, "codeground_operator_reconciles_total")
            api_calls = metric_sum(port, "codeground_operator_api_calls_total")
            rss_now = proc.memory_info().rss
            watch.stop()
        finally:
            sampling.set()
            op.terminate()
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                op.kill()
    return {
        "benchmark": "operator",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "note": "shared 2-core dev box; kwok nodes"},
        "nodes": args.nodes, "gpus_per_node": 8,
        "apply_to_first_job_seconds": {"samples": len(lat), "p50": round(statistics.median(lat), 4) if lat else None,
                                       "p99": round(pct(lat, 0.99), 4) if lat else None, "max": round(max(lat), 4) if lat else None},
        "burst": {"runs": args.runs, "gpus_per_run": gpus, "jobs_created": sum(n in watch.jobs for n in names),
                  "pods_bound": sum(n in watch.bound for n in names),
                  "seconds_to_apply_all": round(applied, 3), "seconds_to_all_first_jobs": _finite(all_jobs),
                  "seconds_to_all_pods_bound": _finite(all_bound),
                  "apply_to_first_job_p50": round(statistics.median(burst_lat), 3) if burst_lat else None,
                  "apply_to_first_job_p99": round(pct(burst_lat, 0.99), 3) if burst_lat else None},
        "reconcile_errors": errors, "reconciles": reconciles, "api_calls": api_calls,
        "operator_rss_mb": {"peak": round(peak[0] / 2**20, 1), "end": round(rss_now / 2**20, 1)},
        "targets": {"p50_le_1s": bool(lat) and statistics.median(lat) <= 1.0, "zero_errors": errors == 0,
                    "rss_le_200mb": peak[0] <= 200 * 2**20},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "operator.json"))
    result = main(ap.parse_args())
    Path(ap.parse_args().out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
