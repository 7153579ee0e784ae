"""Shared helpers for the operator's unit tests: small TrainingRun and Sandbox documents."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from codeground.operator.builders import Owner
from codeground.operator.config import OperatorConfig
from codeground.pipeline import specio

RUN_DOC: dict[str, Any] = {
    "apiVersion": "codeground.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "demo", "namespace": "team-a"},
    "spec": {
        "model": {"name": "Qwen/Qwen3-0.6B"},
        "datasets": [{"name": "arith", "source": "builtin:arith_train"}, {"name": "test", "source": "builtin:arith_test"}],
        "sandbox": {"name": "interpreter"},
        "stages": [
            {"name": "sft", "type": "sft", "resources": {"gpus": 8, "cpu": "32", "memory": "256Gi"}},
            {"name": "grpo", "type": "grpo", "resources": {"gpus": 8, "nodes": 2},
             "grpo": {"dataset": "arith", "promptsPerStep": 32, "numGenerations": 16,
                      "curriculum": [{"steps": 10, "maxLength": 1024, "maxToolCalls": 4}]}},
            {"name": "evaluate", "type": "evaluate", "resources": {"gpus": 1},
             "evaluate": {"benchmarks": ["test"]}},
        ],
        "artifacts": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000", "credentialsSecret": "s3-creds"},
        "backoffLimit": 1,
    },
}


def run_doc(**spec_changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(RUN_DOC)
    doc["spec"].update(spec_changes)
    return doc


@pytest.fixture
def run():
    return specio.parse_object(run_doc())


@pytest.fixture
def owner():
    return Owner("codeground.dev/v1alpha1", "TrainingRun", "demo", "uid-1")


@pytest.fixture
def config():
    return OperatorConfig(trainer_image="trainer:test", sandbox_image="sandbox:test", retry_base=10)
