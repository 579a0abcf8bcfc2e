"""`rl: ebft` (energy-based fine-tuning, Axolotl's ebft and trl blocks): the strided layout gives every rollout the
numbers of its own text, the rollouts are sampled at the right positions, the rewards and advantages are the
paper's formulas, structured mode's gradient is GRPO's, and both modes train with `ft train`'s Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from train_helpers import WORDS, build, make_config, sampling_recorded, snapshot
from ft.config import load_config
from ft.errors import ConfigError
from ft.train import ebft as E

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True, "learning_rate": 0.01}


def code_rows(n: int = 8) -> list[dict]:
    return [{"input": f"Write the words {WORDS[i]} and {WORDS[i + 1]}.", "output": f"{WORDS[i]} {WORDS[i + 1]} " * 3}
            for i in range(n)]


def ebft_config(tmp: Path, model_dir: Path, mode: str, **keys):
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in code_rows()))
    if mode == "strided":
        body = {"ebft": {"mode": "strided", "stride": 4, "context_length": 4, "generate_max_len": 3,
                         "n_samples_per_prompt": 3, "feature_layers": [0.5, 1.0], "ce_coef": 0.03},
                "datasets": [{"path": str(data), "type": "ebft_strided_structured.transform"}]}
    else:
        body = {"ebft": {"feature_layers": [0.5, 1.0], "embed_method": "last_token"},
                "trl": {"num_generations": 4, "max_completion_length": 8, "temperature": 1.0, "use_vllm": True,
                        "vllm_server_host": "0.0.0.0", "scale_rewards": True, "epsilon": 0.2},
                "chat_template": "chatml", "datasets": [{"path": str(data), "type": "ebft_opencode.transform"}]}
    return make_config(tmp, model_dir, rl="ebft", micro_batch_size=2, max_steps=2, **{**body, **keys})


def _model(model_dir: Path, attention: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention, dtype=torch.float32).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_strided_layout_gives_each_rollout_the_numbers_of_its_own_text(attention: str, tiny_model_dir):
    model = _model(tiny_model_dir("llama"), attention)
    torch.manual_seed(0)
    length, steps = 21, 3
    text = torch.randint(3, 200, (length,))
    starts = E.anchors(length, 0, stride=4, context_length=5, generate=steps, min_completion_prefix=0)
    assert starts == [5, 9, 13, 17]
    sampled = torch.randint(3, 200, (steps * len(starts),))
    total = length + len(sampled) + 2  # and two positions of padding
    allowed, positions = E.strided_layout(length, starts, steps, total, text.device)
    seq = torch.cat([text, sampled, torch.zeros(2, dtype=torch.long)])
    mask = allowed[None, None] if attention == "sdpa" else E.additive(allowed, torch.float32)
    with torch.no_grad():
        out = model(input_ids=seq[None], attention_mask=mask, position_ids=positions[None], output_hidden_states=True)
        before = E.predictors(length, starts, steps, text.device)
        for b, start in enumerate(starts):
            rollout = sampled.view(steps, len(starts))[:, b]
            alone = model(input_ids=torch.cat([text[:start], rollout])[None], output_hidden_states=True)
            for s in range(steps):  # the logits that sample token s, and the hidden state of token s
                want = alone.logits[0, start - 1 + s]
                got = out.logits[0, before[s, b]]
                assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (b, s)
                mine = out.hidden_states[-1][0, length + s * len(starts) + b]
                theirs = alone.hidden_states[-1][0, start + s]
                assert (mine - theirs).abs().max() <= 1e-5 * theirs.abs().max(), (b, s)
        text_alone = model(input_ids=text[None]).logits[0]
        assert (out.logits[0, :length] - text_alone).abs().max() <= 1e-5 * text_alone.abs().max()


def test_strided_rollouts_are_sampled_where_each_anchor_predicts(tmp_path: Path, tiny_model_dir):
    """At temperature 0 every rollout is the greedy continuation of the text before its anchor, token by token."""
    cfg = ebft_config(tmp_path, tiny_model_dir("llama"), "strided", **LORA)
    cfg = load_config(tmp_path / "cfg.yml", [("ebft.temperature", 0)], context=None)
    trainer, model, _ = build(cfg)
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.normal_(0, 0.3)  # an adapter that changes the numbers: the rollouts come from the trained model
    text = torch.randint(3, 200, (19,))
    starts = E.anchors(19, 0, 4, 4, 3, 0)
    rollouts = trainer._rollouts(model, text, starts)
    assert rollouts.shape == (3, 3 * len(starts))
    model.eval()
    with torch.no_grad():
        for b, start in enumerate(starts):
            seq = text[:start]
            for s in range(3):
                token = model(input_ids=seq[None]).logits[0, -1].argmax()
                assert int(rollouts[0, s * len(starts) + b]) == int(token), (b, s)
                seq = torch.cat([seq, token[None]])
    assert bool((rollouts == rollouts[0]).all())  # greedy: every sample alike


def test_rewards_and_advantages_are_the_formulas():
    torch.manual_seed(1)
    samples, answer = torch.randn(2, 4, 6), torch.randn(2, 6)
    got = E.rewards(samples, answer, alignment_coef=0.7, diversity_coef=0.3)
    for p in range(2):
        for j in range(4):
            g, f = samples[p, j], answer[p]
            cos = float(g @ f / (g.norm() * f.norm()))
            others = sum(float(g @ samples[p, k]) for k in range(4) if k != j) / 3
            assert abs(float(got["reward"][p, j]) - (0.7 * 2 * cos - 0.3 * 2 * others)) < 1e-5
        assert abs(float(got["cfm"][p]) - float(((samples[p].mean(0) - answer[p]) ** 2).sum())) < 1e-5
    r = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    rloo = [float(r[0, j] - (r.sum() - r[0, j]) / 3) for j in range(4)]
    assert torch.allclose(E.advantages(r, "rloo"), torch.tensor([rloo]))
    mean, std = r.mean(), r.std()
    assert torch.allclose(E.advantages(r, "group_norm"), (r - mean) / (std + 1e-8))
    assert torch.allclose(E.advantages(r, "grpo_scaled"), (r - mean) / (std + 1e-4))
    assert torch.allclose(E.advantages(r, "grpo"), r - mean)
    assert torch.equal(E.advantages(r, "reinforce"), r)
    white, _ = E.whiten(samples[0], answer[:1])  # 4 samples in 6 dimensions: orthonormal after whitening
    assert torch.allclose(white @ white.T, torch.eye(4), atol=1e-4)


def test_structured_gradient_is_grpo_over_the_samples_it_drew(tmp_path: Path, tiny_model_dir):
    """−(1/G) Σ_j A_j · mean_t ∇log π(o_jt), A_j = (r_j − mean r) / (std r + 1e-4), r from the features of the base
    (adapter off) of each sample and of the answer, each computed here from plain forwards."""
    cfg = ebft_config(tmp_path, tiny_model_dir("llama"), "structured", **LORA)
    trainer, model, tokenizer = build(cfg)
    drawn = sampling_recorded(trainer, model)
    batch = next(iter(trainer.get_train_dataloader()))
    torch.manual_seed(3)
    model.train()
    trainer.compute_loss(model, dict(batch)).backward()
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = {n: p.grad.clone() for n, p in lora.items()}
    model.zero_grad()

    eos = torch.tensor([tokenizer.eos_token_id])
    expected = None
    layers = E.layer_indices((0.5, 1.0), model.config.num_hidden_layers)
    for (prompt, samples), ids, labels in zip(drawn, batch["input_ids"], batch["labels"]):
        answer = ids[(labels != -100)][: int((labels != -100).sum())]
        feats = []
        with torch.no_grad(), model.disable_adapter():
            model.eval()
            for text in [torch.cat([prompt, s[:-1] if s[-1] == eos[0] and len(s) > 1 else s]) for s in samples] + [
                    torch.cat([prompt, answer])]:
                h = model(input_ids=text[None], output_hidden_states=True).hidden_states
                feats.append(torch.nn.functional.normalize(torch.cat([h[i][0, -1] for i in layers]), dim=-1))
        gen, gt = torch.stack(feats[:-1]), feats[-1]
        r = 2 * gen @ gt - 2 * ((gen @ gen.T).sum(1) - 1) / (len(samples) - 1)
        a = (r - r.mean()) / (r.std() + 1e-4)
        model.train()
        for j, s in enumerate(samples):
            logits = model(input_ids=torch.cat([prompt, s])[None]).logits[0, len(prompt) - 1:-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, s[:, None]).mean()
            term = -a[j] * logp / (len(samples) * len(drawn))
            expected = term if expected is None else expected + term
    expected.backward()
    for n, p in lora.items():
        assert (got[n] - p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-7, n
    assert any(p.grad.norm() > 0 for p in lora.values())


@pytest.mark.parametrize("mode,keys", [("structured", LORA), ("strided", LORA), ("strided", {"learning_rate": 1e-3})],
                         ids=["structured-lora", "strided-lora", "strided-full"])
def test_ebft_trains(mode: str, keys: dict, tmp_path: Path, tiny_model_dir):
    cfg = ebft_config(tmp_path, tiny_model_dir("llama"), mode, **keys)
    trainer, model, _ = build(cfg)
    if not keys.get("adapter"):
        assert trainer.feature_model is not None and not any(p.requires_grad for p in trainer.feature_model.parameters())
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(not torch.equal(before[n], after[n]) for n in trained if "lora" in n or not keys.get("adapter"))
    logged = [json.loads(line) for line in (Path(cfg.training.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all("ebft/alignment" in r and "ebft/cfm_loss" in r for r in steps)


def _validate(tmp: Path, body: dict):
    path = tmp / "c.yml"
    path.write_text(yaml.safe_dump(body))
    return load_config(path, context=None, warn=lambda _: None)


def test_ebft_settings_that_cannot_hold_are_one_sentence(tmp_path: Path):
    base = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "ebft_pretrain.transform"}]}
    with pytest.raises(ConfigError, match=r"add `rl: grpo` \(or gdpo, ebft\)"):
        _validate(tmp_path, {**base, "trl": {"num_generations": 4}})
    with pytest.raises(ConfigError, match="not supported with fsdp"):
        _validate(tmp_path, {**base, "rl": "ebft", "fsdp": ["full_shard"], "fsdp_config": {"fsdp_version": 2}})
    with pytest.raises(ConfigError, match="remove `sample_packing`"):
        _validate(tmp_path, {**base, "rl": "ebft", "sample_packing": True})
    with pytest.raises(ConfigError, match="`trl:` sets structured mode's"):
        _validate(tmp_path, {**base, "rl": "ebft", "ebft": {"mode": "strided"}, "trl": {"num_generations": 4}})
    with pytest.raises(ConfigError, match="`last_token` or `mean_pooling`"):
        _validate(tmp_path, {**base, "rl": "ebft", "ebft": {"mode": "strided", "embed_method": "concat"}})
    with pytest.raises(ConfigError, match="KL term"):
        _validate(tmp_path, {**base, "rl": "ebft", "trl": {"beta": 0.1}})
    cfg = _validate(tmp_path, {**base, "rl": "ebft", "trl": {"use_vllm": True, "vllm_server_port": 8000,
                                                             "chat_template_kwargs": {"enable_thinking": False}},
                               "vllm": {"gpu_memory_utilization": 0.5}})
    assert cfg.online.trl.server_keys() == ["vllm_server_port"] and not cfg.preference.trains_pairs
    from ft.commands.validate import derived

    assert "ignored: trl.use_vllm, trl.vllm_server_port" in derived(cfg)["ebft"]  # ft validate says what differs
    assert cfg.model.chat_template_kwargs == {"enable_thinking": False}  # trl's reaches the tokenizer's template


def test_chat_template_kwargs_are_written_into_the_template(tmp_path: Path, tiny_model_dir):
    from ft.tokenizer.load import load_tokenizer

    template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}"
                "{% if enable_thinking is defined and not enable_thinking %}<no-think>{% else %}<think>{% endif %}{% endif %}")
    cfg = make_config(tmp_path, tiny_model_dir("llama"), chat_template_jinja=template,
                      chat_template_kwargs={"enable_thinking": False})
    tok = load_tokenizer(cfg.model)
    said = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True)
    assert said == "hi<no-think>"
    tok.save_pretrained(tmp_path / "saved")  # what the run leaves renders the same
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) == said
