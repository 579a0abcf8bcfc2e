"""Smaller training options: registries, pad token, continuing an adapter, early stopping, attention."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from train_helpers import build, make_config

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}


def test_registered_names_are_transformers_names():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from ft.train.optimizers import OPTIMIZERS
    from ft.train.schedulers import SCHEDULERS

    assert {OPTIMIZERS.get(n).hf_name for n in OPTIMIZERS} <= {o.value for o in OptimizerNames}
    assert {SCHEDULERS.get(n) for n in SCHEDULERS} <= {s.value for s in SchedulerType}


def test_missing_pad_token_gets_a_default(tmp_path: Path, tiny_model_dir, caplog):
    import json
    import shutil

    from ft.config.model import ModelConfig
    from ft.tokenizer.load import load_tokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tiny_model_dir("llama"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token")
    config.pop("unk_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(ModelConfig(base_model=str(folder)))
    assert tok.pad_token == tok.eos_token
    assert "no pad token" in caplog.text
    tok = load_tokenizer(ModelConfig(base_model=str(folder), special_tokens={"pad_token": "<pad>"}))
    assert tok.pad_token == "<pad>"


def test_attention_choices():
    from ft.config.model import ModelConfig
    from ft.model.attention import resolve_attention

    base = {"base_model": "m"}
    assert resolve_attention(ModelConfig(**base)) == (None, None)
    assert resolve_attention(ModelConfig(**base, sdp_attention=True))[0] == "sdpa"
    assert resolve_attention(ModelConfig(**base, eager_attention=True))[0] == "eager"
    assert resolve_attention(ModelConfig(**base, attn_implementation="flex_attention"))[0] == "flex_attention"
    impl, warning = resolve_attention(ModelConfig(**base, flash_attention=True))
    assert impl == "sdpa" and "flash-attn is not installed" in warning


def test_continue_from_a_saved_adapter(tmp_path: Path, tiny_model_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_config(tmp_path / "a", tiny_model_dir("llama"), **LORA)
    trainer, model, _ = build(first)
    trainer.train()
    trainer.save_model(first.training.output_dir)
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    second = make_config(tmp_path / "b", tiny_model_dir("llama"), lora_model_dir=first.training.output_dir, **LORA)
    trainer, model, _ = build(second)
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert all(bool((loaded[n] == saved[n]).all()) for n in saved)
    assert all(p.requires_grad for p in loaded.values())


def test_early_stopping_and_group_by_length_run(tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir("llama"), val_set_size=4, eval_steps=1, early_stopping_patience=1,
                      group_by_length=True, learning_rate=5.0, optimizer="sgd", max_steps=20, **LORA)
    trainer, _, _ = build(cfg)
    assert trainer.args.load_best_model_at_end and trainer.args.save_steps == 1
    trainer.train()
    assert trainer.state.global_step < 20  # the eval loss stopped improving and training stopped


def scheduled_rates(cfg, steps: int) -> list[float]:
    """The learning rate at each of `steps` + 1 steps, read off the scheduler the Trainer builds for `cfg`."""
    trainer, _, _ = build(cfg)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    for _ in range(steps + 1):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


def test_cosine_min_lr_ratio_floors_the_cosine_schedule(tmp_path: Path, tiny_model_dir):
    """Axolotl's cosine_min_lr_ratio: after warmup the cosine falls from learning_rate to ratio × learning_rate
    (lr_t = lr · (r + (1 − r) · ½(1 + cos(π t / T)))), read off the scheduler the Trainer builds."""
    import math

    cfg = make_config(tmp_path, tiny_model_dir("llama"), lr_scheduler="cosine", cosine_min_lr_ratio=0.1, max_steps=10,
                      learning_rate=0.01, **LORA)
    rates = scheduled_rates(cfg, 10)
    want = [0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 10))) for t in range(11)]
    assert all(abs(a - b) <= 1e-9 for a, b in zip(rates, want)), (rates, want)


def test_the_loss_watchdog_stops_a_run_whose_loss_stays_high(tmp_path: Path, tiny_model_dir):
    from conftest import run_ft

    make_config(tmp_path, tiny_model_dir("llama"), max_steps=6, loss_watchdog_threshold=0.5, loss_watchdog_patience=2, **LORA)
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the training loss stayed above loss_watchdog_threshold 0.5 for 2 logged steps (step 2:" in result.stderr
    assert "Traceback" not in result.stderr
    make_config(tmp_path, tiny_model_dir("llama"), max_steps=3, loss_watchdog_threshold=100.0, output_dir=str(tmp_path / "calm"), **LORA)
    assert run_ft("train", "cfg.yml", cwd=tmp_path).returncode == 0  # a loss under the threshold trains on


def test_cosine_min_lr_ratio_needs_the_cosine_schedule(tmp_path: Path, tiny_model_dir):
    import pytest

    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cfg.yml:\d+: `cosine_min_lr_ratio`: it shapes the cosine schedule and does "
                                          r"nothing with `lr_scheduler: linear`"):
        make_config(tmp_path, tiny_model_dir("llama"), lr_scheduler="linear", cosine_min_lr_ratio=0.1)


def test_cosine_constant_lr_ratio_holds_the_floor_after_its_share_of_the_steps(tmp_path: Path, tiny_model_dir):
    """Axolotl's cosine_constant_lr_ratio: warmup, the cosine from learning_rate down to cosine_min_lr_ratio ×
    learning_rate reached at ratio × steps, then that floor to the end; read off the Trainer's scheduler."""
    import math

    cfg = make_config(tmp_path, tiny_model_dir("llama"), lr_scheduler="cosine", cosine_min_lr_ratio=0.2,
                      cosine_constant_lr_ratio=0.6, warmup_steps=2, max_steps=10, learning_rate=0.01, **LORA)
    rates = scheduled_rates(cfg, 10)
    want = [0.0, 0.005] + [0.01 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (t - 2) / 4))) for t in range(2, 6)] + [0.002] * 5
    assert all(abs(a - b) <= 1e-12 for a, b in zip(rates, want)), (rates, want)


def test_lr_quadratic_warmup_warms_up_along_the_square(tmp_path: Path, tiny_model_dir):
    """Axolotl's lr_quadratic_warmup: (step / warmup)² × learning_rate during warmup, then the cosine to 0 (or to
    cosine_min_lr_ratio); refused with another schedule."""
    import math

    from ft.errors import ConfigError

    cfg = make_config(tmp_path, tiny_model_dir("llama"), lr_scheduler="cosine", lr_quadratic_warmup=True, warmup_steps=4,
                      max_steps=10, learning_rate=0.01, **LORA)
    rates = scheduled_rates(cfg, 10)
    want = [0.01 * (t / 4) ** 2 for t in range(4)] + [0.01 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 6)) for t in range(4, 10)]
    assert all(abs(a - b) <= 1e-12 for a, b in zip(rates, want)), (rates, want)
    with pytest.raises(ConfigError, match="the quadratic warmup goes with the cosine schedule"):
        make_config(tmp_path, tiny_model_dir("llama"), lr_scheduler="linear", lr_quadratic_warmup=True)


def test_curriculum_sampling_trains_the_rows_in_their_order(tmp_path: Path, tiny_model_dir):
    """Axolotl's curriculum_sampling: the prepared rows keep the datasets' order and every epoch reads them in it."""
    from ft.errors import ConfigError

    cfg = make_config(tmp_path, tiny_model_dir("llama"), curriculum_sampling=True, micro_batch_size=2)
    trainer, _, tokenizer = build(cfg)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    seen = [tokenizer.decode(ids) for batch in trainer.get_train_dataloader() for ids in batch["input_ids"]]
    assert len(seen) == len(rows) and all(row["input"] in text for row, text in zip(rows, seen))
    with pytest.raises(ConfigError, match="`curriculum_sampling` trains the rows in their order"):
        make_config(tmp_path, tiny_model_dir("llama"), curriculum_sampling=True, sample_packing=True)


def test_save_strategy_and_save_only_model(tmp_path: Path, tiny_model_dir):
    """save_strategy (the Trainer's and Axolotl's key): no saves only the final model, epoch one checkpoint an
    epoch; save_only_model checkpoints hold no optimizer state, and a run resumed from one says so."""
    import logging
    import shutil

    from ft.commands.train import run_train
    from ft.train.checkpoints import is_complete

    def checkpoints(name: str, **keys) -> list[Path]:
        out = tmp_path / name
        run_train(make_config(tmp_path, tiny_model_dir("llama"), output_dir=str(out), **LORA, **keys))
        assert (out / "adapter_model.safetensors").is_file()
        return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))

    assert checkpoints("no", save_strategy="no", max_steps=4) == []
    epoch = checkpoints("epoch", save_strategy="epoch", num_epochs=2, max_steps=None, micro_batch_size=16)
    assert len(epoch) == 2 and all(is_complete(p) for p in epoch)
    slim = checkpoints("slim", save_only_model=True, save_steps=2, max_steps=4)
    assert [p.name for p in slim] == ["checkpoint-2", "checkpoint-4"]
    assert (slim[0] / "adapter_model.safetensors").is_file() and not list(slim[0].glob("optimizer*"))
    shutil.rmtree(slim[1])
    (tmp_path / "slim/summary.json").unlink()
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("ft")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        checkpoints("slim", save_only_model=True, save_steps=2, max_steps=4)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("checkpoint-2 holds the weights only (save_only_model)" in line for line in said), said


def test_save_strategy_best_keeps_the_improving_evaluations(tmp_path: Path, tiny_model_dir):
    import json

    from ft.commands.train import run_train

    cfg = make_config(tmp_path, tiny_model_dir("llama"), save_strategy="best", val_set_size=0.2, eval_steps=2, max_steps=6,
                      learning_rate=0.02, **LORA)
    run_train(cfg)
    out = Path(cfg.training.output_dir)
    evals = [r["eval_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    improving = [i for i, loss in enumerate(evals) if loss < min(evals[:i], default=float("inf"))]
    assert len(evals) == 3 and improving
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == [2 * (i + 1) for i in improving]


def test_pytorch_adamw_runs_fused_on_one_gpu_only():
    from ft.train.args import optimizer_name

    assert optimizer_name("adamw_torch", True, False) == "adamw_torch_fused"
    assert optimizer_name("adamw_torch", False, False) == "adamw_torch"  # CPU
    assert optimizer_name("adamw_torch", True, True) == "adamw_torch"  # DeepSpeed / FSDP keep their own path
    assert optimizer_name("adamw_bnb_8bit", True, False) == "adamw_bnb_8bit"


def test_lisa_trains_the_drawn_layers_of_each_window(tmp_path: Path, tiny_model_dir):
    """LISA (Axolotl's lisa_* keys): in each window of lisa_step_interval steps only lisa_n_layers drawn layers (and
    the embeddings and head) change; the draw is the same for the same seed and window, and not always one layer."""
    import torch
    from transformers import TrainerCallback

    from ft.errors import ConfigError
    from ft.train.callbacks import LisaLayers

    folder = tiny_model_dir("llama")
    cfg = make_config(tmp_path, folder, lisa_n_layers=1, lisa_step_interval=2, max_steps=4, learning_rate=0.01)
    trainer, model, _ = build(cfg)
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % 2 == 0:
                snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})

    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.add_callback(Snapshot())
    trainer.train()
    lisa = LisaLayers(1, 2, "model.layers", cfg.training.seed)
    for window, (before, after) in enumerate(zip([start] + snapshots, snapshots)):
        changed = {int(n.split(".")[2]) for n in after if n.startswith("model.layers.") and not torch.equal(before[n], after[n])}
        assert changed == set(lisa.drawn(2, window)), window
        assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert len({tuple(lisa.drawn(8, w)) for w in range(20)}) > 1
    try:
        make_config(tmp_path, folder, lisa_n_layers=1, adapter="lora")
    except ConfigError as exc:
        assert "LISA chooses which whole layers of a full fine-tune train" in str(exc)
    else:
        raise AssertionError("LISA with an adapter was accepted")


def test_gradient_checkpointing_layers_recomputes_only_the_first_layers(tmp_path: Path, tiny_model_dir):
    """gradient_checkpointing_layers: 1 of 2 layers recomputes in the backward pass (its attention runs twice, the
    other's once), and the LoRA gradients equal those of checkpointing every layer and of none (fp32)."""
    import torch

    from ft.errors import ConfigError
    from train_helpers import fixed_batch

    folder = tiny_model_dir("llama")
    lora = {"adapter": "lora", "lora_target_linear": True}
    grads, calls = {}, {}
    for name, keys in (("none", {}), ("all", {"gradient_checkpointing": True}),
                       ("first", {"gradient_checkpointing": True, "gradient_checkpointing_layers": 1})):
        (tmp_path / name).mkdir()
        _, model, tokenizer = build(make_config(tmp_path / name, folder, **lora, **keys))
        counts = [0, 0]
        for i, layer in enumerate(model.base_model.model.model.layers):
            layer.self_attn.register_forward_hook(lambda *args, i=i: counts.__setitem__(i, counts[i] + 1))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)  # B starts at zero: let the gradient reach A
        model.train()
        model(**fixed_batch(tokenizer)).loss.backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        calls[name] = counts
    assert calls == {"none": [1, 1], "all": [2, 2], "first": [2, 1]}
    for name in ("all", "first"):
        for n, g in grads["none"].items():
            assert float((grads[name][n] - g).norm() / (g.norm() + 1e-12)) < 1e-5, (name, n)
    try:
        make_config(tmp_path, folder, gradient_checkpointing_layers=1)
    except ConfigError as exc:
        assert "turn on `gradient_checkpointing` too" in str(exc)
    else:
        raise AssertionError("gradient_checkpointing_layers without gradient_checkpointing was accepted")


def _eaft_by_hand(logits, labels, alpha: float, k: int):
    """EAFT's loss position by position from the logits: each trained token's cross-entropy times the entropy of the
    softmax over its k largest logits (no gradient) to the power alpha, averaged over the trained tokens."""
    import math

    import torch

    total, count = logits.new_zeros((), dtype=torch.float64), 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            row = logits[b, t].double()
            ce = torch.logsumexp(row, 0) - row[target]
            top = sorted(row.detach().tolist(), reverse=True)[:k]
            z = sum(math.exp(v - top[0]) for v in top)
            probs = [math.exp(v - top[0]) / z for v in top]
            entropy = -sum(p * math.log(p + 1e-10) for p in probs)
            total, count = total + ce * entropy ** alpha, count + 1
    return total / count


def test_eaft_weights_each_token_by_the_entropy_of_its_top_k_logits(tmp_path: Path, tiny_model_dir):
    """use_eaft: the loss ft trains on (chunked over the hidden states, and from the model's logits) and its LoRA
    gradients equal EAFT's formula computed token by token from a plain forward (fp32); eaft_alpha 0 is the plain
    loss; EAFT is refused where no cross-entropy is trained."""
    import torch

    from ft.errors import ConfigError
    from train_helpers import fixed_batch

    folder = tiny_model_dir("llama")
    for name, keys in (("chunked", {}), ("logits", {"chunked_cross_entropy": False})):
        (tmp_path / name).mkdir()
        trainer, model, tokenizer = build(make_config(tmp_path / name, folder, **LORA, use_eaft=True, eaft_alpha=1.5,
                                                      eaft_k=5, **keys))
        assert trainer.eaft == (1.5, 5) and trainer.chunked_loss == (name == "chunked")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        batch = fixed_batch(tokenizer)
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        rest = {k: v for k, v in batch.items() if k != "labels"}
        want = _eaft_by_hand(model(**rest).logits, batch["labels"], 1.5, 5)
        want.backward()
        assert abs(float(loss.detach()) - float(want.detach())) <= 1e-5 * abs(float(want.detach())), name
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert float((got[n] - p.grad).norm() / (p.grad.norm() + 1e-12)) < 1e-5, (name, n)
        model.zero_grad()
        trainer.eaft = (0.0, 5)
        with torch.no_grad():
            assert abs(float(trainer.compute_loss(model, dict(batch))) - float(model(**batch).loss)) < 1e-5
    try:
        make_config(tmp_path, folder, use_eaft=True, rl="dpo")
    except ConfigError as exc:
        assert "EAFT weights the cross-entropy" in str(exc)
    else:
        raise AssertionError("use_eaft with rl: dpo was accepted")


def test_eval_strategy_no_holds_the_rows_out_and_never_evaluates(tmp_path: Path, tiny_model_dir):
    """eval_strategy: no (Axolotl's evaluation_strategy too): the validation rows are held out, no evaluation runs;
    with evals_per_epoch it is one sentence; `epoch` evaluates once an epoch."""
    from ft.errors import ConfigError

    folder = tiny_model_dir("llama")
    (tmp_path / "no").mkdir()
    trainer, _, _ = build(make_config(tmp_path / "no", folder, val_set_size=0.25, evaluation_strategy="no"))
    assert trainer.eval_dataset is not None and len(trainer.train_dataset) == 24
    assert trainer.args.eval_strategy == "no"
    (tmp_path / "epoch").mkdir()
    trainer, _, _ = build(make_config(tmp_path / "epoch", folder, val_set_size=0.25, eval_strategy="epoch",
                                      max_steps=None, num_epochs=2))
    assert trainer.args.eval_strategy == "steps" and trainer.args.eval_steps == 6  # 24 rows, 4 a step
    try:
        make_config(tmp_path, folder, val_set_size=0.25, eval_strategy="no", evals_per_epoch=2)
    except ConfigError as exc:
        assert "`eval_strategy: no` never evaluates, and `evals_per_epoch` needs evaluations" in str(exc)
    else:
        raise AssertionError("eval_strategy: no with evals_per_epoch was accepted")


def test_cls_model_config_reads_the_config_with_that_class(tmp_path: Path, tiny_model_dir):
    """cls_model_config: the model's config read by the named transformers class (the model loads with it); a name
    transformers does not have is one sentence."""
    from ft.errors import ConfigError
    from ft.model.load import model_config

    folder = tiny_model_dir("llama")
    cfg = make_config(tmp_path, folder, cls_model_config="LlamaConfig")
    assert type(model_config(cfg.model)).__name__ == "LlamaConfig"
    _, model, _ = build(cfg)
    assert type(model.config).__name__ == "LlamaConfig"
    cfg = make_config(tmp_path, folder, cls_model_config="NoSuchModelConfig")
    try:
        model_config(cfg.model)
    except ConfigError as exc:
        assert "transformers has no config class `NoSuchModelConfig`" in str(exc)
    else:
        raise AssertionError("an unknown cls_model_config was accepted")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_whose_package_is_missing_is_one_sentence_before_loading(tmp_path: Path, tiny_model_dir):
    """Axolotl configs often set wandb_project: without the wandb package, `ft train` says so in one sentence
    (the Trainer would stop with a traceback when building its callback)."""
    from conftest import run_ft

    make_config(tmp_path, tiny_model_dir("llama"), wandb_project="demo", **LORA)
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "ft: error: `wandb_project` is set, but the wandb package is not installed: pip install wandb" in result.stderr


def test_accelerator_config_reaches_the_trainer_and_batch_dealing_stays_fts(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    cfg = make_config(tmp_path, tiny_model_dir("llama"), max_steps=1,
                      accelerator_config={"gradient_accumulation_kwargs": {"sync_each_batch": True}})
    trainer, _, _ = build(cfg)
    assert trainer.args.accelerator_config.gradient_accumulation_kwargs["sync_each_batch"] is True
    assert trainer.accelerator.gradient_state.plugin_kwargs.get("sync_each_batch") is True
    with pytest.raises(ConfigError, match="`accelerator_config.split_batches` changes how batches are dealt"):
        make_config(tmp_path, tiny_model_dir("llama"), accelerator_config={"split_batches": True})


def test_min_sample_len_drops_short_rows_and_says_how_many(tiny_tokenizer):
    from helpers import tokenize

    rows = [{"instruction": "Hi.", "input": "", "output": "Yo."},
            {"instruction": "Reverse the words: " + "cat dog sun " * 5, "input": "", "output": "sun dog cat " * 5}]
    every = tokenize(rows, tiny_tokenizer)
    short = min(len(ids) for ids in every.input_ids)
    out = tokenize(rows, tiny_tokenizer, min_sample_len=short + 1)
    assert len(out.input_ids) == 1 and out.counts.dropped_short == 1 and out.input_ids[0] == max(every.input_ids, key=len)
    assert tokenize(rows, tiny_tokenizer, min_sample_len=short).counts.dropped_short == 0


def test_liger_kernels_without_a_gpu_leave_the_models_own_layers(tmp_path: Path, tiny_model_dir, caplog):
    """liger_rms_norm, liger_rope and liger_glu_activation are Triton kernels (CUDA): on this CPU the run keeps the
    model's own layers and says so (tests/test_gpu.py checks the kernels themselves on a GPU)."""
    cfg = make_config(tmp_path, tiny_model_dir("llama"), liger_rms_norm=True, liger_rope=True, liger_glu_activation=True)
    with caplog.at_level("WARNING", logger="ft"):
        _, model, _ = build(cfg)
    assert "liger_rms_norm, liger_rope, liger_glu_activation: Liger's kernels run on CUDA GPUs" in caplog.text
    assert not any(getattr(getattr(m, "forward", None), "__module__", "").startswith("liger_kernel") for m in model.modules())
