"""The stage entrypoint's progress sink: a running stage annotates its own Pod for the operator."""

from __future__ import annotations

import json

from codeground.operator import labels as L
from codeground.pipeline import entrypoint


def test_no_pod_env_means_no_pod_sink(monkeypatch):
    monkeypatch.delenv("POD_NAME", raising=False)
    assert entrypoint._pod_annotation_sink() is None


def test_pod_sink_patches_the_progress_annotation(monkeypatch):
    from kubernetes import client, config

    calls = []

    class FakeCore:
        def patch_namespaced_pod(self, name, namespace, body, **_):
            calls.append((name, namespace, body))

    monkeypatch.setenv("POD_NAME", "demo-grpo-1-0-abc")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "CoreV1Api", FakeCore)
    sink = entrypoint._pod_annotation_sink()
    sink({"progress": "12/80", "step": 12, "total": 80, "metrics": {"reward": 0.5}})
    name, ns, body = calls[0]
    assert (name, ns) == ("demo-grpo-1-0-abc", "team-a")
    value = json.loads(body["metadata"]["annotations"][L.PROGRESS_ANNOTATION])
    assert value == {"progress": "12/80", "metrics": {"reward": 0.5}}
    assert entrypoint.PROGRESS_ANNOTATION == L.PROGRESS_ANNOTATION
