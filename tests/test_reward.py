"""`reward_model: true` (Axolotl's reward-model examples, TRL's RewardTrainer): Bradley-Terry pairs' scores read at
each text's last token, the loss equal to the formula computed pair by pair, a short run that learns the rule of
the pairs, and its adapter (with the new head) loading back to the same scores."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from train_helpers import WORDS, build, make_config

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}


def bt_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """Axolotl's bradley_terry rows (system, input, chosen, rejected): chosen answers use the first half of WORDS."""
    rng = random.Random(seed)
    return [{"system": "Answer briefly.", "input": "Name three things: " + " ".join(rng.sample(WORDS, 3)),
             "chosen": " ".join(rng.sample(WORDS[:8], 3)), "rejected": " ".join(rng.sample(WORDS[8:], 3))} for _ in range(n)]


def reward_config(tmp: Path, model_dir: Path, **keys):
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bt_rows()))
    body = {"datasets": [{"path": str(data), "type": "bradley_terry.chat_template"}], "reward_model": True,
            "num_labels": 1, "sequence_len": 96, "micro_batch_size": 4, **keys}
    return make_config(tmp, model_dir, **body)


def _plain_score(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, 0].float()


@pytest.mark.parametrize("keys", [{}, {**LORA, "center_rewards_coefficient": 0.5}], ids=["full", "lora-centred"])
def test_the_loss_is_the_bradley_terry_formula_pair_by_pair(keys: dict, tmp_path: Path, tiny_model_dir):
    cfg = reward_config(tmp_path, tiny_model_dir("llama"), **keys)
    trainer, model, tokenizer = build(cfg)
    assert type(trainer.model).__name__ != "LlamaForCausalLM"
    if keys:
        assert [n for n, p in model.named_parameters() if p.requires_grad and "score" in n]  # the new head trains
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "score" in n:
                p.normal_(0, 0.5)  # scores that differ between texts
    model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    ids = batch["input_ids"].tolist()
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, dict(batch)))
        rows = [[t for t, m in zip(row, mask) if m] for row, mask in zip(ids, batch["attention_mask"].tolist())]
        scores = torch.stack([_plain_score(model, row) for row in rows])
    chosen, rejected = scores[0::2], scores[1::2]
    c = keys.get("center_rewards_coefficient", 0.0)
    expected = float((-torch.nn.functional.logsigmoid(chosen - rejected) + c * (chosen + rejected) ** 2).mean())
    assert abs(loss - expected) <= 1e-5 * max(abs(expected), 1e-3), (loss, expected)
    assert "Answer briefly." in tokenizer.decode(rows[0]) and rows[0] != rows[1]


def test_a_short_run_learns_the_pairs_and_its_adapter_loads_back_and_merges(tmp_path: Path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    folder = tiny_model_dir("llama")
    cfg = reward_config(tmp_path, folder, **LORA, max_steps=24, learning_rate=0.02, logging_steps=4)
    trainer, model, tokenizer = build(cfg)
    trainer.train()
    log = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
    assert log and log[-1]["rewards/accuracies"] >= 0.9 and log[-1]["loss"] < log[0]["loss"]
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    loaded = PeftModel.from_pretrained(base, out).eval()
    model.eval()
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    from ft.model.merge import merge_lora

    merged = AutoModelForSequenceClassification.from_pretrained(merge_lora(cfg.model, out, tmp_path / "merged")).eval()
    with torch.no_grad():
        rows = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        torch.testing.assert_close(loaded(**rows).logits, model(**rows).logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(merged(**rows).logits, model(**rows).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("keys, said", [
    ({"rl": "dpo"}, "keep one"),
    ({"num_labels": 3}, "`num_labels: 1`, not 3"),
    ({"sample_packing": True}, "reads each answer's score at its last token"),
])
def test_reward_model_refusals(keys: dict, said: str, tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match=said):
        reward_config(tmp_path, tiny_model_dir("llama"), **keys)


def test_num_labels_without_a_reward_model_is_refused_by_name(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Axolotl's `num_labels` without `reward_model` \(sequence classification\)"):
        make_config(tmp_path, tiny_model_dir("llama"), num_labels=1)
