"""`process_reward_model: true` with `type: stepwise_supervised` rows (TRL's PRMTrainer, Axolotl's qwen2/prm.yaml): a
class on the last token of each step, the loss the cross-entropy over those tokens, a run that trains the head and
the adapter, and the merged model scoring as the adapter does."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from helpers import tokenize
from train_helpers import WORDS, build, make_config, snapshot
from ft.data.labels import IGNORE

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}


def step_rows(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        steps = [" ".join(rng.sample(WORDS[:10], 3)) for _ in range(3)]
        rows.append({"prompt": "Judge each step.", "completions": steps, "labels": [WORDS[0] in s for s in steps]})
    return rows


def test_each_step_s_class_sits_on_its_last_token(tiny_tokenizer):
    tok = tiny_tokenizer
    row = {"prompt": "Add 2 and 2.", "completions": ["2 + 2 = 4", "so 4"], "labels": [True, False]}
    out = tokenize([row], tok, "stepwise_supervised", {"step_separator": "\n"})
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    head = [tok.bos_token_id] + encode("Add 2 and 2.")
    first, second = encode("2 + 2 = 4") + encode("\n"), encode("so 4") + encode("\n")
    assert out.input_ids[0] == head + first + second
    assert out.labels[0] == [IGNORE] * (len(head) + len(first) - 1) + [1] + [IGNORE] * (len(second) - 1) + [0]
    last_only = tokenize([row], tok, "stepwise_supervised", {"train_on_last_step_only": True})
    assert [v for v in last_only.labels[0] if v != IGNORE] == [0]
    cut = tokenize([row], tok, "stepwise_supervised", {"max_completion_length": len(first)})
    assert cut.input_ids[0] == head + first and [v for v in cut.labels[0] if v != IGNORE] == [1]


def prm_config(tmp: Path, model_dir: Path, **keys):
    data = tmp / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in step_rows()))
    keys = {"num_labels": 2, **keys}
    return make_config(tmp, model_dir, datasets=[{"path": str(data), "type": "stepwise_supervised"}],
                       process_reward_model=True, micro_batch_size=4, **keys)


def test_the_loss_is_the_cross_entropy_of_the_steps_classes(tmp_path: Path, tiny_model_dir):
    trainer, model, _ = build(prm_config(tmp_path, tiny_model_dir("llama"), **LORA))
    assert type(model.get_base_model()).__name__ == "LlamaForTokenClassification"
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "score" in n:
                p.normal_(0, 0.3)
    model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, dict(batch)))
        picked, targets = [], []
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            logits = model(input_ids=ids[None, :n]).logits[0]
            at = (labels[:n] != IGNORE).nonzero()[:, 0]
            picked.append(logits[at])
            targets.append(labels[at])
        expected = float(torch.nn.functional.cross_entropy(torch.cat(picked).float(), torch.cat(targets)))
    assert abs(loss - expected) <= 1e-5 * expected


def test_a_process_reward_model_trains_and_merges(tmp_path: Path, tiny_model_dir):
    cfg = prm_config(tmp_path, tiny_model_dir("llama"), max_steps=3, val_set_size=4, eval_steps=3, **LORA)
    trainer, model, _ = build(cfg)
    before = snapshot(model)
    trainer.train()
    trainer.save_model()
    after = snapshot(model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trained) and all(not torch.equal(before[n], after[n]) for n in trained)
    logged = [json.loads(line) for line in (Path(cfg.training.output_dir) / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in logged if "eval_loss" in r]
    assert evaluations and not any("perplexity" in r for r in evaluations)  # a classification loss has none
    from ft.model.merge import merge_lora

    out = merge_lora(cfg.model, Path(cfg.training.output_dir), tmp_path / "merged")
    from transformers import AutoModelForTokenClassification

    merged = AutoModelForTokenClassification.from_pretrained(out).eval()
    model.eval()
    ids = torch.tensor([[1, 5, 9, 12, 30]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_stepwise_rows_and_process_reward_models_go_together(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match="set `process_reward_model: true`"):
        make_config(tmp_path, tiny_model_dir("llama"), datasets=[{"path": "s.jsonl", "type": "stepwise_supervised"}])
    with pytest.raises(ConfigError, match="trains on `type: stepwise_supervised` rows"):
        make_config(tmp_path, tiny_model_dir("llama"), process_reward_model=True)
    with pytest.raises(ConfigError, match="`num_labels: 2` or more"):
        prm_config(tmp_path, tiny_model_dir("llama"), num_labels=1)
