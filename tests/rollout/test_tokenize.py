"""Token spans: the model-token mask must cover exactly the model's text, for every chat template we support.

Golden test: decode the tokens the mask marks as the model's and as the interpreter's; the first must be
the model segments (plus the end-of-turn token), the second exactly the ```output blocks, and no
interpreter text may leak into the trained tokens.
"""

import copy

import pytest

from codeground.pipeline.rollout.tokenize import encode_trajectory, prompt_ids, render_prompt, turn_end_text
from codeground.pipeline.rollout.trajectory import Segment, Trajectory

# Chat templates the project supports, as (name, template, special tokens to register, end of turn).
TEMPLATES = [
    ("chatml", None, [], "<|im_end|>"),  # SmolLM2's own template
    (
        "llama3",
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
    ),
    (
        "gemma",
        "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
        ["<start_of_turn>", "<end_of_turn>"],
        "<end_of_turn>",
    ),
    (
        "qwen3",
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{% endif %}",
        ["<think>", "</think>"],
        "<|im_end|>",
    ),
    (
        "mistral",
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}",
        ["[INST]", "[/INST]"],
        "<|im_end|>",  # SmolLM2's eos plays </s>
    ),
]

SECRET = "INTERPRETER-ONLY-7431"


def _traj() -> Trajectory:
    return Trajectory(
        problem_id="p1",
        prompt=[{"role": "user", "content": "What is 12 * 3?"}],
        segments=[
            Segment("model", "I will multiply.\n```python\nprint(12 * 3)\n```\n"),
            Segment("interpreter", "```output\n36\n```\n", status="ok"),
            Segment("model", "Check once more.\n```python\nprint('x')\n```\n"),
            Segment("interpreter", f"```output\n{SECRET}\nTraceback: boom\n```\n", status="error"),
            Segment("model", "The answer is \\boxed{36}."),
        ],
        final_answer="36",
        reference="36",
        correct=True,
        stop_reason="answer",
    )


def _tokenizer(base, template, specials):
    tok = copy.deepcopy(base)
    if template is not None:
        tok.chat_template = template
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


@pytest.mark.parametrize(("name", "template", "specials", "end"), TEMPLATES, ids=[t[0] for t in TEMPLATES])
def test_golden_mask_decodes_to_model_text_only(smol_tokenizer, name, template, specials, end):
    tok = _tokenizer(smol_tokenizer, template, specials)
    traj = _traj()
    enc = encode_trajectory(tok, traj)
    ids, mask = enc["completion_ids"], enc["completion_mask"]
    assert len(ids) == len(mask)
    model = tok.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=False)
    interp = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m], skip_special_tokens=False)
    assert turn_end_text(tok) == end
    assert model == "".join(s.text for s in traj.segments if s.role == "model") + end
    assert interp == "".join(s.text for s in traj.segments if s.role == "interpreter")
    assert SECRET not in model and "```output" not in model and "36\n```" not in model
    # the prompt is the template with the assistant turn opened; labels never train on it
    assert tok.decode(enc["prompt_ids"], skip_special_tokens=False) == render_prompt(tok, traj.prompt)
    assert enc["prompt_ids"] == prompt_ids(tok, traj.prompt)
    n_prompt = len(enc["prompt_ids"])
    assert enc["input_ids"] == enc["prompt_ids"] + ids
    assert all(label == -100 for label in enc["labels"][:n_prompt])
    trained = [t for t in enc["labels"][n_prompt:] if t != -100]
    assert tok.decode(trained, skip_special_tokens=False) == model


def test_no_turn_end_when_the_model_did_not_stop(smol_tokenizer):
    traj = _traj()
    traj.stop_reason = "max_tokens"
    enc = encode_trajectory(smol_tokenizer, traj)
    assert not smol_tokenizer.decode(enc["completion_ids"]).endswith("<|im_end|>")


def test_max_length_caps_the_completion(smol_tokenizer):
    enc = encode_trajectory(smol_tokenizer, _traj(), max_length=10)
    assert len(enc["completion_ids"]) == len(enc["completion_mask"]) == 10
    assert enc["truncated"]
    assert not encode_trajectory(smol_tokenizer, _traj())["truncated"]


def test_stored_token_ids_are_used_verbatim(smol_tokenizer):
    traj = _traj()
    traj.segments[0].token_ids = [11, 12, 13]
    enc = encode_trajectory(smol_tokenizer, traj)
    assert enc["completion_ids"][:3] == [11, 12, 13]
    assert enc["completion_mask"][:3] == [1, 1, 1]
    enc2 = encode_trajectory(smol_tokenizer, traj, use_token_ids=False)
    assert enc2["completion_ids"][:3] != [11, 12, 13]


def test_tokenizer_without_template_fails_clearly(smol_tokenizer):
    from codeground.pipeline.errors import StageError

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with pytest.raises(StageError, match="no chat template"):
        encode_trajectory(tok, _traj())
