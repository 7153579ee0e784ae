"""The ``codeground`` command line.

Subcommands: ``validate``, ``run``, ``crds``, ``lineage``, ``stage run`` (the entrypoint of every
stage pod), ``sandbox serve``, plus commands that other parts of the distribution register through
the ``codeground.cli`` entry-point group (``operator``, ``dev cluster``): the pipeline never imports
the operator package, it only loads what is registered.

Every error codeground raises on purpose is printed as one line per problem, without a traceback,
and the exit code is non-zero (2 for invalid input, 1 for failures while running).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .errors import CodegroundError, SpecError

log = logging.getLogger("codeground")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cmd_validate(args: argparse.Namespace) -> int:
    from .specio import load_file

    failed = False
    for path in args.files:
        try:
            objs = load_file(path)
        except SpecError as exc:
            failed = True
            print(exc.format(), file=sys.stderr)
            continue
        for obj in objs:
            print(f"{path}: {obj.kind} {obj.metadata.name} is valid")
    return 2 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import open_run_store, run_pipeline
    from .specio import load_training_run

    run = load_training_run(args.file)  # validated before anything is written
    if args.stage is not None:
        try:
            run.spec.stage(args.stage)
        except KeyError:
            names = ", ".join(s.name for s in run.spec.stages)
            raise SpecError([("--stage", f"no stage named {args.stage!r}; the run has {names}")], args.file) from None
    store = open_run_store(run, args.out, base_dir=Path.cwd())
    status = run_pipeline(run, store, only_stage=args.stage, resume=args.resume)
    from .summary import print_summary

    print_summary(run, status, store)
    return 0 if status.phase in ("Succeeded", "Pending") else 1


def _cmd_crds(args: argparse.Namespace) -> int:
    from .crdgen import render_crds

    targets = [Path(args.out)] if args.out else [REPO_ROOT / "crds", REPO_ROOT / "charts" / "codeground" / "crds"]
    stale = []
    for target in targets:
        if not target.parent.exists():
            continue
        for name, text in render_crds().items():
            path = target / name
            current = path.read_text() if path.exists() else None
            if current != text:
                stale.append(str(path))
                if not args.check:
                    target.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    if args.check and stale:
        print("stale generated CRDs (run `codeground crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    for s in stale:
        print(f"wrote {s}")
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from .lineage import format_chain, trace

    print(format_chain(trace(args.uri, endpoint=args.endpoint)))
    return 0


def _cmd_stage_run(args: argparse.Namespace) -> int:
    from .entrypoint import run_stage_entrypoint

    return run_stage_entrypoint(args.spec, args.stage, resume=not args.no_resume, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeground", description="Train small language models to reason in code.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check TrainingRun/Sandbox files with the API server's rules")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run a TrainingRun's stages on this machine")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", help="artifact store (folder or s3://bucket/prefix); overrides spec.artifacts.uri")
    p.add_argument("--stage", help="run only this stage (its upstream stages must be complete)")
    p.add_argument("--resume", action="store_true", help="skip complete stages, continue from checkpoints")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("crds", help="generate crds/*.yaml (and the chart's copy) from the API models")
    p.add_argument("--out", help="write into this folder only")
    p.add_argument("--check", action="store_true", help="exit 1 if the committed files are stale")
    p.set_defaults(func=_cmd_crds)

    p = sub.add_parser("lineage", help="trace a stage manifest back through its inputs")
    p.add_argument("uri", help="URI of a manifest.json (or of a stage folder)")
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3 endpoint URL")
    p.set_defaults(func=_cmd_lineage)

    p = sub.add_parser("stage", help="stage commands (the entrypoint of stage pods)")
    stage_sub = p.add_subparsers(dest="stage_command", required=True)
    sp = stage_sub.add_parser("run", help="run one stage of a TrainingRun and commit its artifacts")
    sp.add_argument("--spec", required=True, help="TrainingRun YAML (mounted from a ConfigMap in pods)")
    sp.add_argument("--stage", required=True, help="stage name")
    sp.add_argument("--out", help="artifact store override")
    sp.add_argument("--no-resume", action="store_true", help="start from scratch instead of the last checkpoint")
    sp.set_defaults(func=_cmd_stage_run)

    try:
        from .sandbox.service import add_cli as add_sandbox_cli
    except ImportError:  # the sandbox service is optional in minimal installs
        add_sandbox_cli = None  # type: ignore[assignment]
    if add_sandbox_cli is not None:
        add_sandbox_cli(sub)

    for ep in entry_points(group="codeground.cli"):
        try:
            ep.load()(sub)
        except ImportError as exc:
            log.debug("command %s unavailable: %s", ep.name, exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        print(exc.format(), file=sys.stderr)
        return 2
    except CodegroundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
