"""Shared-prefix scoring (pipeline/stages/prefix_share.py) gives TRL's log-probs and gradients, cheaper."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codeground.pipeline.stages import prefix_share as ps  # noqa: E402

PAD = 0


def _batch(prompts: list[list[int]], completions: list[list[int]]):
    """TRL's layout: left-padded prompts, right-padded completions, one attention mask."""
    p = max(map(len, prompts))
    k = max(map(len, completions))
    ids, mask = [], []
    for pr, co in zip(prompts, completions, strict=True):
        ids.append([PAD] * (p - len(pr)) + pr + co + [PAD] * (k - len(co)))
        mask.append([0] * (p - len(pr)) + [1] * len(pr) + [1] * len(co) + [0] * (k - len(co)))
    return torch.tensor(ids), torch.tensor(mask), k


def test_shared_prefix_length_stops_at_the_first_difference_and_keeps_one_own_token():
    ids, mask, _ = _batch([[5, 6, 7, 8, 9], [5, 6, 7, 3], [5, 6, 7, 8, 2, 2]], [[1], [1], [1]])
    p = ids.size(1) - 1
    assert ps.shared_prefix_length(ids[:, :p], mask[:, :p]) == 3  # row 2 differs at its 4th token
    same, smask, _ = _batch([[5, 6, 7], [5, 6, 7]], [[1], [2]])
    assert ps.shared_prefix_length(same[:, :3], smask[:, :3]) == 2  # the last prompt token stays in the suffix


def test_layout_puts_each_row_at_its_real_positions():
    ids, mask, k = _batch([[5, 6, 7, 8], [5, 6, 9]], [[11, 12, 13], [14]])
    lay = ps.build_layout(ids, mask, k, 2)
    assert lay.prefix.tolist() == [[5, 6]]
    assert lay.suffix_ids.tolist() == [[7, 8, 11, 12, 13], [9, 14, 0, 0, 0]]
    assert lay.suffix_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # position k scores the token at k+1 when it is an attended completion token
    assert lay.shift_labels.tolist() == [[-100, 11, 12, 13, -100], [14, -100, -100, -100, -100]]
    assert lay.starts.tolist() == [2, 1]
    per_pos = torch.arange(10).view(2, 5)
    assert ps.gather_completion(per_pos, lay.starts, lay.width).tolist() == [[1, 2, 3], [5, 6, 7]]


def _tiny(seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=PAD)
    model = Qwen3ForCausalLM(config).float()
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    return model


def _trl_path(model, ids, mask, k):
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-k] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -k:], out.entropy[:, -k:]


def _grads(model, logps, mask):
    model.zero_grad()
    (logps * mask).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_equal_length_prompts_give_trls_log_probs_entropies_and_gradients():
    model = _tiny()
    shared = list(range(3, 23))  # a 20-token "few-shot prefix"
    ids, mask, k = _batch([[*shared, 40, 41], [*shared, 42, 43], [*shared, 44, 45]],
                          [[50, 51, 52, 53], [54, 55], [56, 57, 58]])
    cmask = mask[:, -k:].float()
    want, want_ent = _trl_path(model, ids, mask, k)
    want_grads = _grads(model, want, cmask)
    got, got_ent = ps.score(model, ids, mask, k, None, True)
    got_grads = _grads(model, got, cmask)
    torch.testing.assert_close(got * cmask, want * cmask, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_ent * cmask, want_ent * cmask, rtol=1e-4, atol=1e-5)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-3, atol=1e-6)


def test_unequal_prompts_are_scored_as_if_each_ran_alone_unpadded():
    model = _tiny(1)
    shared = list(range(3, 23))
    prompts = [[*shared, 40], [*shared, 41, 42, 43], [*shared, 44, 45]]
    completions = [[50, 51, 52], [53], [54, 55, 56, 57]]
    ids, mask, k = _batch(prompts, completions)
    got, _ = ps.score(model, ids, mask, k, 2, False)  # in chunks of 2 rows
    for i, (pr, co) in enumerate(zip(prompts, completions, strict=True)):
        alone = torch.tensor([pr + co])
        want, _ = _trl_path(model, alone, torch.ones_like(alone), len(co))
        torch.testing.assert_close(got[i, : len(co)], want[0], rtol=1e-4, atol=1e-5)
        assert torch.all(got[i, len(co):] == 0)  # padding scores nothing


def test_short_shared_prefixes_fall_back_to_trl():
    model = _tiny()
    ids, mask, k = _batch([[3, 4, 5], [3, 9, 9]], [[7], [8]])
    assert ps.score(model, ids, mask, k, None, False) is None


def _one_grpo_step(model_dir, tok, out_dir, trainer_cls):
    """One optimizer step of TRL GRPO on scripted rollouts: group 0 rewards differ, group 1 all wrong."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    shared = tok.apply_chat_template([{"role": "system", "content": "Solve it with Python. " * 8}], tokenize=False)
    tails = {"q0": "What is 12 * 34?", "q1": "What is 56 + 78?"}
    replies = {"q0": ["```python\nprint(12 * 34)\n```", "It is 400.", "```python\nprint(408)\n```", "No."],
               "q1": ["Maybe 1.", "Maybe 2.", "Maybe 3.", "Maybe 4."]}

    def rollout(prompts, trainer):
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": None, "env_mask": []}
        seen: dict[str, int] = {}
        for p in prompts:
            i = seen[p] = seen.get(p, -1) + 1
            out["prompt_ids"].append(tok(shared + tails[p], add_special_tokens=False)["input_ids"])
            ids = tok(replies[p][i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out["completion_ids"].append(ids)
            out["env_mask"].append([1] * len(ids))
        return out

    def reward(completions, **kw):
        return [1.0 if ("408" in c if isinstance(c, str) else "408" in c[-1]["content"]) else 0.0
                for c in completions]

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = GRPOConfig(output_dir=str(out_dir), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                        num_generations=4, max_completion_length=64, max_steps=1, learning_rate=1e-3,
                        beta=0.0, loss_type="dapo", num_iterations=1, logging_steps=1, save_strategy="no",
                        use_cpu=True, bf16=False, activation_checkpointing=False, report_to=[], disable_tqdm=True,
                        seed=0, shuffle_dataset=False)
    trainer = trainer_cls(model=model, reward_funcs=[reward], args=config, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": "q0"}, {"prompt": "q1"}]), rollout_func=rollout)
    trainer.train()
    return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_one_grpo_step_moves_the_weights_exactly_as_trls_own_path(tmp_path, tiny_model, chatml_tokenizer):
    from trl import GRPOTrainer

    from codeground.pipeline.stages.trainers import trainer_class

    ours, got = _one_grpo_step(tiny_model, chatml_tokenizer, tmp_path / "ours", trainer_class(GRPOTrainer))
    _, want = _one_grpo_step(tiny_model, chatml_tokenizer, tmp_path / "trl", GRPOTrainer)
    assert ours.skipped_rows == 4  # the all-wrong group: no forward, no backward
    assert ours.prefix_batches >= 1  # the micro-batches with rows left ran the prefix once
    moved = 0
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-6)
        moved += int(not torch.equal(w, _fresh(tiny_model)[name]))
    assert moved > 0  # the step did change the weights, so the comparison means something


_FRESH: dict = {}


def _fresh(model_dir):
    if model_dir not in _FRESH:
        from transformers import AutoModelForCausalLM

        _FRESH[model_dir] = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()}
    return _FRESH[model_dir]


def test_right_padded_prefix_stops_before_the_first_label():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, -100, -100, 5, 6], [-100, -100, -100, -100, 7, -100]])
    assert ps.right_padded_prefix(ids, mask, labels) == 3  # token 4's hidden state predicts the first label
    early = labels.clone()
    early[0, 2] = 3
    assert ps.right_padded_prefix(ids, mask, early) == 1
    assert ps.right_padded_prefix(ids, mask.flip(1), labels) == 0  # left padding: TRL's path


def _one_sft_step(model_dir, out_dir, trainer_cls):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    shared = list(range(10, 40))  # the few-shot prefix
    rows = []
    for i, (tail, answer) in enumerate([([41, 42], [50, 51, 52]), ([43], [53, 54]), ([44, 45, 46], [55]),
                                        ([47], [56, 57, 58, 59])]):
        ids = [*shared, *tail, *answer]
        rows.append({"input_ids": ids, "labels": [-100] * (len(shared) + len(tail)) + answer})
        assert i < 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                       learning_rate=1e-3, max_steps=1, max_length=None, logging_steps=1, save_strategy="no",
                       use_cpu=True, bf16=False, activation_checkpointing=False, report_to=[], disable_tqdm=True,
                       seed=0, data_seed=0)
    trainer = trainer_cls(model=model, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_one_sft_step_moves_the_weights_exactly_as_trls_own_path(tmp_path, tiny_model):
    from trl import SFTTrainer

    from codeground.pipeline.stages.trainers import sft_trainer_class

    ours, got = _one_sft_step(tiny_model, tmp_path / "ours", sft_trainer_class(SFTTrainer))
    _, want = _one_sft_step(tiny_model, tmp_path / "trl", SFTTrainer)
    assert ours.prefix_batches == 2  # both micro-batches ran the 30-token prefix once
    fresh = _fresh(tiny_model)
    assert any(not torch.equal(w, fresh[n]) for n, w in want.items())
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-6)
