"""`rl: grpo` / `rl: gdpo` (Axolotl's llama-3/qlora-1b-gdpo): prompts from a user's Python transform, samples scored
by the user's reward functions with the row's other columns, advantages by GRPO's or GDPO's aggregation, and the
gradient of GRPO's loss with its KL term, each checked against a computation from plain forwards."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from conftest import run_ft
from train_helpers import WORDS, build, make_config, sampling_recorded

REWARDS = '''
def gsm8k_like(cfg, *args, **kwargs):
    def map_fn(example, tokenizer=None):
        return {"prompt": [{"role": "user", "content": example["question"]}], "answer": example["answer"]}
    return map_fn, {"remove_columns": ["question"]}


def length_reward(completions, **kwargs):
    return [len(c[0]["content"]) / 10 for c in completions]


def match_reward(prompts, completions, answer, **kwargs):
    assert isinstance(prompts[0], list) and prompts[0][0]["role"] == "user"
    return [None if i == 1 else float(a.split()[0] in c[0]["content"]) for i, (c, a) in enumerate(zip(completions, answer))]
'''
LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True, "learning_rate": 0.01}


def grpo_config(tmp: Path, model_dir: Path, rl: str = "gdpo", **keys):
    (tmp / "rwd.py").write_text(REWARDS)
    rows = [{"question": f"Say {WORDS[i]} twice.", "answer": f"{WORDS[i]} {WORDS[i]}", "level": i % 3} for i in range(8)]
    (tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = {"trl": {"num_generations": 3, "max_completion_length": 6, "temperature": 1.0, "beta": 0.1,
                    "reward_funcs": ["rwd.length_reward", "rwd.match_reward"], "reward_weights": [1.0, 2.0]},
            "chat_template": "chatml", "datasets": [{"path": str(tmp / "rows.jsonl"), "type": "rwd.gsm8k_like"}]}
    return make_config(tmp, model_dir, rl=rl, micro_batch_size=2, max_steps=2, **{**body, **keys})


def _normalized(values: list[float]) -> list[float]:
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return [(v - mean) / (std + 1e-4) for v in values]


def test_advantages_are_grpos_and_gdpos_formulas():
    from ft.train.grpo import group_advantages

    torch.manual_seed(0)
    rewards = torch.rand(3, 4, 2)  # prompts, samples, functions
    rewards[1, 2, 1] = float("nan")  # no reward from the second function for that sample
    weights = torch.tensor([1.0, 2.0])
    table = rewards.tolist()
    got = group_advantages(rewards, weights, "sum_then_normalize", True)
    for g in range(3):
        total = [sum(w * r for w, r in zip((1.0, 2.0), sample) if r == r) for sample in table[g]]
        assert torch.allclose(got[g], torch.tensor(_normalized(total)), atol=1e-5)
    got = group_advantages(rewards, weights, "normalize_then_sum", True)
    summed = []
    for g in range(3):
        per = []
        for k in range(2):
            given = [s[k] for s in table[g] if s[k] == s[k]]
            mean, std = statistics.fmean(given), statistics.stdev(given)
            per.append([(s[k] - mean) / (std + 1e-4) if s[k] == s[k] else 0.0 for s in table[g]])
        summed += [1.0 * a + 2.0 * b for a, b in zip(*per)]
    assert torch.allclose(got.flatten(), torch.tensor(_normalized(summed)), atol=1e-5)


def test_the_gradient_is_grpos_with_its_kl_term_over_the_rewarded_samples(tmp_path: Path, tiny_model_dir, monkeypatch):
    """−(1/N) Σ_j mean_t [A_j ∇log π + β ∇KL_t], KL_t = e^(q−p) − (q−p) − 1 against the adapter-off model; the
    rewards computed here from the decoded samples and the rows' answers, A by GDPO's aggregation."""
    monkeypatch.chdir(tmp_path)
    cfg = grpo_config(tmp_path, tiny_model_dir("llama"), **LORA)
    trainer, model, tokenizer = build(cfg)
    drawn = sampling_recorded(trainer, model)
    batch = next(iter(trainer.get_train_dataloader()))
    answers = [row["answer"] for row in batch["ft_rewards_read"]]
    model.train()
    trainer.compute_loss(model, dict(batch)).backward()
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = {n: p.grad.clone() for n, p in lora.items()}
    model.zero_grad()

    eos = tokenizer.eos_token_id
    rewards = []  # per prompt: per sample [length, match]
    for (prompt, samples), answer in zip(drawn, answers):
        texts = [tokenizer.decode(s[:-1] if s[-1] == eos and len(s) > 1 else s, skip_special_tokens=True) for s in samples]
        rewards.append([[len(t) / 10, float("nan") if j == 1 else float(answer.split()[0] in t)] for j, t in enumerate(texts)])
    per_prompt = []
    for group in rewards:
        columns = []
        for k in range(2):
            given = [s[k] for s in group if s[k] == s[k]]
            mean, std = statistics.fmean(given), statistics.stdev(given)
            columns.append([(s[k] - mean) / (std + 1e-4) if s[k] == s[k] else 0.0 for s in group])
        per_prompt.append([a + 2 * b for a, b in zip(*columns)])
    advantages = _normalized([a for group in per_prompt for a in group])
    expected, n, i = 0.0, sum(len(s) for _, s in drawn), 0
    for prompt, samples in drawn:
        for s in samples:
            text = torch.cat([prompt, s])[None]
            logp = torch.log_softmax(model(input_ids=text).logits[0, len(prompt) - 1:-1].float(), -1).gather(-1, s[:, None])[:, 0]
            with torch.no_grad(), model.disable_adapter():
                q = torch.log_softmax(model(input_ids=text).logits[0, len(prompt) - 1:-1].float(), -1).gather(-1, s[:, None])[:, 0]
            kl = torch.exp(q - logp) - (q - logp) - 1
            expected = expected + (-advantages[i] * logp + 0.1 * kl).mean() / n
            i += 1
    expected.backward()
    for name, p in lora.items():
        assert (got[name] - p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-7, name
    assert any(p.grad.norm() > 0 for p in lora.values())


def test_a_gdpo_run_trains_and_logs_each_reward(tmp_path: Path, tiny_model_dir):
    grpo_config(tmp_path, tiny_model_dir("llama"), **LORA, trl={
        "num_generations": 2, "max_completion_length": 4, "beta": 0.001, "reward_funcs": ["rwd.length_reward",
        "rwd.match_reward"], "reward_weights": [1.0, 2.0], "multi_objective_aggregation": "normalize_then_sum",
        "log_completions": True, "num_completions_to_print": 1, "use_vllm": False, "scale_rewards": True})
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GDPO: 2 samples" in result.stderr and "sample (rewards length_reward" in result.stderr, result.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all("grpo/rewards/match_reward" in r and "grpo/kl" in r for r in steps), steps


@pytest.mark.parametrize("change, said", [
    ({"trl": {"num_generations": 2}}, "set `trl.reward_funcs`"),
    ({"datasets": [{"path": "rows.jsonl", "type": "alpaca"}]}, "which a Python transform makes"),
    ({"rl": None, "trl": None}, "makes prompts, which `rl: grpo`"),
    ({"trl": {"reward_funcs": ["rwd.a", "rwd.b"], "reward_weights": [1.0]}}, "give one weight per function"),
])
def test_grpo_settings_that_cannot_hold_are_one_sentence(change: dict, said: str, tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        grpo_config(tmp_path, tiny_model_dir("llama"), **change)
    assert said in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_missing_reward_module_is_said_at_the_start(tmp_path: Path, tiny_model_dir):
    grpo_config(tmp_path, tiny_model_dir("llama"), trl={"num_generations": 2, "reward_funcs": ["nowhere.reward"]})
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "the reward function `nowhere.reward`: no module `nowhere`" in result.stderr, result.stderr[-2000:]


def test_a_prompt_longer_than_sequence_len_is_dropped_not_cut(tmp_path: Path, tiny_model_dir):
    """The samples continue a prompt's end, so a prompt is never truncated: it is dropped and counted."""
    grpo_config(tmp_path, tiny_model_dir("llama"), sequence_len=40)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    rows[0]["question"] = " ".join(WORDS * 4)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_ft("preprocess", "cfg.yml", cwd=tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 0 and "rows read 8: kept 7, dropped 1 longer than sequence_len 40" in said, said[-2000:]
