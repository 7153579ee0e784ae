"""Shared plumbing of the sft and grpo stages: starting model, precision, checkpoints, metrics.

Called only by :mod:`.sft`, :mod:`.grpo` and :mod:`.grpo_rollout`. Everything here is about running a
TRL trainer inside a codeground stage; nothing here knows about SFT or GRPO specifically.

Checkpoints: TRL writes ``checkpoint-N`` folders under the stage's local checkpoint folder; a callback
(:class:`CheckpointMirror`) marks each one complete (a ``COMPLETE`` file written last) and copies it to
the artifact store under ``<run>/<stage>/checkpoints/``, keeping the newest there. Resume picks the
newest *complete* checkpoint, locally or from the store, so a checkpoint cut short (disk full, kill)
is never resumed from.

What it does not guarantee: that a checkpoint written by another torch/transformers version loads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import StageError

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"  # written last into a checkpoint folder: the checkpoint is whole
STATE_FILE = "codeground_state.json"  # stage-specific state saved beside TRL's files
FINGERPRINT = "FINGERPRINT"  # what the checkpoint was trained from: stage parameters + upstream manifests


# ----------------------------------------------------------------------------- hardware
def device_setup() -> dict[str, Any]:
    """Precision and distributed settings for TRL configs, from the hardware and torchrun's env.

    GPU: bf16 and gradient checkpointing. CPU: bf16 autocast where the CPU has bf16 instructions
    (avx512_bf16/amx, ~1.5x faster; ``CODEGROUND_CPU_BF16=0`` turns it off), else fp32; no gradient
    checkpointing (it only slows small models down). WORLD_SIZE / RANK / MASTER_ADDR come
    from torchrun or the operator's indexed Job; accelerate reads them itself.
    """
    import torch

    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        log.info("distributed: world size %s, rank %s, master %s:%s", world, os.environ.get("RANK"),
                 os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    return {
        "cuda": cuda,
        "world_size": world,
        "rank": int(os.environ.get("RANK", "0")),
        "config": {
            "bf16": bool(torch.cuda.is_bf16_supported()) if cuda else cpu_bf16(),
            "fp16": False,
            "activation_checkpointing": cuda,
            "use_cpu": not cuda,
            "ddp_find_unused_parameters": False if world > 1 else None,
            "dataloader_num_workers": 0,
            "report_to": [],
            "disable_tqdm": True,  # our own rich progress bar reports each step
            "save_only_model": False,
        },
    }


def cpu_bf16() -> bool:
    """Whether bf16 autocast pays off on this CPU (native bf16 dot products)."""
    forced = os.environ.get("CODEGROUND_CPU_BF16")
    if forced is not None:
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------- model
def load_start_model(ctx: Any) -> tuple[Any, Any, str]:
    """The stage's starting model: the previous training stage's output, else spec.model.

    Returns ``(model, tokenizer, description)``. Raises StageError for a missing model or a tokenizer
    without a chat template (our prompts are chat prompts).
    """
    from ..rollout.models import load_model

    kind, ref = ctx.model_source()
    if kind == "spec" and _is_local_path(ref.name) and not Path(ref.name).exists():
        raise StageError(f"spec.model.name: model path {ref.name!r} does not exist (expected a hub id, a folder, "
                         "a .gguf file, s3://… or builtin:smollm2)")
    try:
        model, tok = load_model(ref)
    except StageError:
        raise
    except Exception as exc:  # transformers raises many types; say which model failed
        raise StageError(f"cannot load model {ref.name!r} ({kind}): {type(exc).__name__}: {exc}") from exc
    check_chat_template(tok, ref.name)
    return model, tok, f"{kind}:{ref.name}"


def _is_local_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf")


def check_chat_template(tok: Any, name: str) -> None:
    if not getattr(tok, "chat_template", None):
        raise StageError(
            f"tokenizer of model {name!r} has no chat template; codeground prompts are chat messages. "
            "Use an instruct model or set tokenizer.chat_template in the model folder's tokenizer_config.json")


def save_plain_model(model: Any, tok: Any, dest: Path) -> None:
    """Save a plain HF checkpoint the next stage (or a user) loads with from_pretrained.

    Drops a GGUF quantization_config (save_pretrained refuses it); writes to a temp folder first so a
    failure (disk full) never leaves a half-written model where the next stage looks.
    """
    unwrapped = getattr(model, "module", model)
    if hasattr(unwrapped.config, "quantization_config"):
        del unwrapped.config.quantization_config
    with contextlib.suppress(AttributeError):
        unwrapped.hf_quantizer = None
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with disk_errors(f"saving the model to {dest}"):
        unwrapped.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)


@contextlib.contextmanager
def disk_errors(what: str, last_good: Callable[[], str | None] | None = None) -> Iterator[None]:
    """Turn running out of disk into a StageError that says what was kept."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        good = last_good() if last_good else None
        kept = f"; the last good checkpoint {good} is intact" if good else "; no earlier checkpoint exists"
        raise StageError(f"out of disk space while {what} ({exc.strerror}){kept}. Free space and rerun with --resume") from exc


# ----------------------------------------------------------------------------- checkpoints
def _step_of(p: Path) -> int:
    try:
        return int(p.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).exists()]
    return sorted(found, key=_step_of)


def fingerprint(ctx: Any) -> str:
    """Identity of what a stage trains: its parameters, the run's seed and every upstream manifest's sha256.

    A checkpoint with another fingerprint (the spec or an upstream stage changed since) is never resumed.
    """
    import hashlib

    doc = {"params": ctx.stage.params().model_dump(by_alias=True, mode="json"), "seed": ctx.run.spec.seed,
           "model": ctx.run.spec.model.model_dump(mode="json"), "inputs": [i["sha256"] for i in ctx.inputs()]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def remove_incomplete(folder: Path, expected: str | None = None) -> None:
    """Delete checkpoints cut short (no COMPLETE) or trained from something else (fingerprint differs)."""
    if folder.is_dir():
        for p in folder.glob("checkpoint-*"):
            if not (p / COMPLETE).exists():
                log.warning("removing incomplete checkpoint %s", p)
                shutil.rmtree(p, ignore_errors=True)
            elif expected is not None and _read(p / FINGERPRINT) != expected:
                log.warning("removing checkpoint %s: the spec or an upstream stage changed since it was written", p)
                shutil.rmtree(p, ignore_errors=True)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def store_checkpoint_prefix(ctx: Any) -> str:
    return f"{ctx.store.stage_prefix(ctx.run.metadata.name, ctx.stage.name)}/checkpoints"


def mirror_checkpoint(ctx: Any, ckpt: Path, rel: str) -> None:
    """Copy a complete checkpoint to the store (marker last), then delete older mirrored ones."""
    prefix = store_checkpoint_prefix(ctx)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != COMPLETE)
    for p in files:
        ctx.store.put_file(f"{prefix}/{rel}/{p.relative_to(ckpt).as_posix()}", p)
    ctx.store.put_bytes(f"{prefix}/{rel}/{COMPLETE}", b"ok\n")
    for key in ctx.store.list(prefix):
        if not key[len(prefix) + 1:].startswith(rel + "/"):
            ctx.store.delete(key)


def restore_checkpoint(ctx: Any, local_root: Path) -> None:
    """Download the store's mirrored checkpoint into ``local_root`` when no local copy has it (new pod)."""
    prefix = store_checkpoint_prefix(ctx)
    keys = ctx.store.list(prefix)
    done = {k[len(prefix) + 1:].rsplit("/", 1)[0] for k in keys if k.endswith("/" + COMPLETE)}
    for rel in done:
        target = local_root / rel
        if (target / COMPLETE).exists():
            continue
        log.info("restoring checkpoint %s from the artifact store", rel)
        for key in keys:
            sub = key[len(prefix) + 1:]
            if sub.startswith(rel + "/"):
                dest = local_root / sub
                dest.parent.mkdir(parents=True, exist_ok=True)
                ctx.store.get_file(key, dest)


def make_checkpoint_callback(ctx: Any, local_root: Path, extra_state: Callable[[], dict] | None = None) -> Any:
    """A TrainerCallback that, after each save, writes our state file and COMPLETE, then mirrors."""
    from transformers import TrainerCallback

    stamp = fingerprint(ctx)

    class CheckpointMirror(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not ckpt.is_dir():
                return
            with disk_errors(f"writing checkpoint {ckpt}", lambda: str(_previous(ckpt))):
                if extra_state is not None:
                    (ckpt / STATE_FILE).write_text(json.dumps(extra_state()))
                (ckpt / FINGERPRINT).write_text(stamp + "\n")
                (ckpt / COMPLETE).write_text("ok\n")
            for old in complete_checkpoints(ckpt.parent)[:-2]:  # keep two locally
                shutil.rmtree(old, ignore_errors=True)
            try:
                mirror_checkpoint(ctx, ckpt, ckpt.relative_to(local_root).as_posix())
            except Exception as exc:  # the local copy is good; a store hiccup must not kill training
                log.warning("mirroring %s to the artifact store failed: %s", ckpt, exc)

    def _previous(ckpt: Path) -> Path | None:
        older = [p for p in complete_checkpoints(ckpt.parent) if p != ckpt]
        return older[-1] if older else None

    return CheckpointMirror()


# ----------------------------------------------------------------------------- metrics & progress
class MetricsLog:
    """Appends one JSON object per line to ``path`` (the operator-readable metrics file)."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        if not append and path.exists():
            path.unlink()
        self.rows: list[dict[str, Any]] = []
        if append and path.exists():
            self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write(self, row: dict[str, Any]) -> None:
        row = {"time": round(time.time(), 3), **row}
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Forget rows past ``step`` (steps redone after resuming from an earlier checkpoint)."""
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))


@contextlib.contextmanager
def progress_bar(description: str, total: int, start: int = 0) -> Iterator[Callable[..., None]]:
    """A rich progress bar on a terminal (plain log lines otherwise); yields ``advance(step, **metrics)``."""
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not sys.stderr.isatty():
        def advance(step: int, **metrics: float) -> None:
            shown = " ".join(f"{k}={v:.3g}" for k, v in metrics.items())
            log.info("%s %d/%d %s", description, step, total, shown)
        yield advance
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=start, info="")

        def advance(step: int, **metrics: float) -> None:
            bar.update(task, completed=step, info=" ".join(f"{k}={v:.3g}" for k, v in metrics.items()))
        yield advance
