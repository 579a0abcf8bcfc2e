"""Knowledge distillation (teacher_model, kd_*): the loss ft trains with equals the seed's formula computed row by
row from plain forwards of both models, for the whole vocabulary and the teacher's top-k, with forward KL,
reverse KL and a generalized JSD; a student identical to its teacher has no distillation loss; gradient
accumulation gives the loss of one large batch; bad input is refused in one sentence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ft.errors import ConfigError
from train_helpers import build, make_config

ALPHA, T = 0.7, 3.0


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A factory: teacher_dir(arch) → a tiny model with the student's tokenizer, other weights, a wider hidden
    size and 16 head rows of padding beyond the vocabulary (as sizes of one family differ)."""
    from ft.tiny import build_tokenizer, make_tiny_model

    built: dict[str, Path] = {}
    rows = len(build_tokenizer())

    def get(arch: str = "llama") -> Path:
        if arch not in built:
            extra = {"head_dim": 16} if arch == "gemma2" else {}
            built[arch] = make_tiny_model(tmp_path_factory.mktemp(f"teacher-{arch}"), arch=arch, weights_seed=7,
                                          hidden_size=96, intermediate_size=160, vocab_size=rows + 16, **extra)
        return built[arch]

    return get


def _rows_of(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of a flattened batch (its row edges), or of a padded one (its attention mask)."""
    ids, labels = batch["input_ids"], batch["labels"]
    if "cu_seq_lens_q" in batch:
        cu = batch["cu_seq_lens_q"].tolist()
        return [(ids[:, a:b], labels[:, a:b]) for a, b in zip(cu[:-1], cu[1:])]
    return [(ids[i:i + 1, m.bool()], labels[i:i + 1, m.bool()]) for i, m in enumerate(batch["attention_mask"])]


def divergence_reference(p_log: torch.Tensor, q_log: torch.Tensor, beta: float) -> torch.Tensor:
    """D(p, q) summed over positions, written from the definitions with torch's kl_div."""
    import torch.nn.functional as F

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # KL(a‖b) from log-probabilities
        return F.kl_div(b, a, log_target=True, reduction="sum")

    if beta == 0:
        return kl(p_log, q_log)
    if beta == 1:
        return kl(q_log, p_log)
    m = (beta * p_log.exp() + (1 - beta) * q_log.exp()).log()
    return beta * kl(p_log, m) + (1 - beta) * kl(q_log, m)


def seed_formula(student, teacher, batch: dict, vocab: int, beta: float, top_k=None) -> tuple[torch.Tensor, float, float]:
    """(loss, KD sum, CE sum): alpha · T² · D + (1 − alpha) · CE per trained token, each row alone through plain
    forwards of both models (their own logits, eager attention)."""
    import torch.nn.functional as F

    from ft.train.loss import causal_lm_of

    kd, ce, count = 0.0, 0.0, 0
    for model in (causal_lm_of(student), teacher):
        model.set_attn_implementation("eager")
    for ids, labels in _rows_of(batch):
        targets = labels[0, 1:]
        keep = targets != -100
        s = student(input_ids=ids).logits[0, :-1][keep].float()
        with torch.no_grad():
            t = teacher(input_ids=ids).logits[0, :-1][keep].float()
        q_log = torch.log_softmax(s[:, :vocab] / T, -1)
        p_log = torch.log_softmax(t[:, :vocab] / T, -1)
        if top_k:
            ids_k = p_log.topk(top_k, -1).indices
            p_log, q_log = (torch.cat([x.gather(-1, ids_k), torch.log(1 - x.gather(-1, ids_k).exp().sum(-1, keepdim=True))], -1)
                            for x in (p_log, q_log))
        kd = kd + divergence_reference(p_log, q_log, beta)
        ce = ce + F.cross_entropy(s, targets[keep], reduction="sum")
        count += int(keep.sum())
    loss = (ALPHA * T * T * kd + (1 - ALPHA) * ce) / count
    return loss, float(kd), float(ce)


def _distill_config(tmp_path: Path, student: Path, teacher: Path, **keys):
    body = {"teacher_model": str(teacher), "kd_alpha": ALPHA, "kd_temperature": T, "adapter": "lora",
            "lora_target_linear": True, "sample_packing": True, "micro_batch_size": 3}
    body.update(keys)
    return make_config(tmp_path, student, **body)


def _first_batch(trainer) -> dict:
    from ft.train.batches import REAL_TOKENS

    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop(REAL_TOKENS, None)
    return batch


def _compare(trainer, model, batch: dict, beta: float, top_k=None) -> tuple[float, float]:
    """(relative difference of the loss, largest relative difference of a trained gradient) between ft's loss
    on the batch and the seed's formula row by row."""
    from ft.data.labels import IGNORE

    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: every LoRA weight gets a gradient
    model.train()
    items = int((batch["labels"][:, 1:] != IGNORE).sum())
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
    ours = torch.autograd.grad(loss, params)
    model.eval()  # the reference: no dropout either
    want, _, _ = seed_formula(model, trainer.teacher, batch, trainer.vocab, beta, top_k)
    theirs = torch.autograd.grad(want, params)
    grad = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) for a, b in zip(ours, theirs))
    return abs(float(loss - want)) / abs(float(want)), grad


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.3], ids=["forward-kl", "reverse-kl", "jsd"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "phi3"])
def test_the_loss_equals_the_seed_formula_row_by_row(arch, beta, tmp_path: Path, tiny_model_dir, teacher_dir):
    trainer, model, _ = build(_distill_config(tmp_path, tiny_model_dir(arch), teacher_dir(arch), kd_beta=beta))
    assert trainer.vocab == len(trainer.processing_class) < trainer.teacher.get_output_embeddings().weight.shape[0]
    loss_diff, grad_diff = _compare(trainer, model, _first_batch(trainer), beta=beta)
    assert loss_diff < 1e-5 and grad_diff < 1e-5, (loss_diff, grad_diff)


@pytest.mark.parametrize("beta, top_k, layout", [(1.0, None, "padded"), (0.4, None, "padding_free"),
                                                 (0.0, 5, "packed"), (0.4, 5, "padded")])
def test_other_layouts_and_top_k_equal_the_seed_formula(beta, top_k, layout, tmp_path: Path, tiny_model_dir, teacher_dir):
    keys = {"kd_beta": beta, "kd_top_k": top_k, "sample_packing": layout == "packed", "padding_free": layout == "padding_free"}
    trainer, model, _ = build(_distill_config(tmp_path, tiny_model_dir("llama"), teacher_dir("llama"),
                                              **{k: v for k, v in keys.items() if v is not None}))
    batch = _first_batch(trainer)
    assert ("cu_seq_lens_q" in batch) is (layout != "padded")
    loss_diff, grad_diff = _compare(trainer, model, batch, beta=beta, top_k=top_k)
    assert loss_diff < 1e-5 and grad_diff < 1e-5, (loss_diff, grad_diff)


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_a_student_identical_to_its_teacher_has_no_distillation_loss(beta, tmp_path: Path, tiny_model_dir):
    folder = tiny_model_dir("llama")
    trainer, model, _ = build(_distill_config(tmp_path, folder, folder, kd_beta=beta))
    batch = _first_batch(trainer)
    model.train()
    loss = float(trainer.compute_loss(model, dict(batch)))
    kd, ce, count = trainer._sums["train"]
    _, _, plain_ce = seed_formula(model, trainer.teacher, batch, trainer.vocab, beta)
    assert kd <= 1e-6 * ce
    assert abs(loss - (1 - ALPHA) * plain_ce / count) <= 1e-6 * loss


def test_accumulation_trains_like_one_large_batch(tmp_path: Path, tiny_model_dir, teacher_dir):
    """micro batch 1 × accumulation 4 = micro batch 4 × 1 (TRL's GKD normalised per micro batch: trl#4719)."""
    from ft.commands.train import run_train

    adapters = []
    for micro, accumulation in ((4, 1), (1, 4)):
        (tmp_path / f"{micro}x{accumulation}").mkdir()
        cfg = _distill_config(tmp_path / f"{micro}x{accumulation}", tiny_model_dir("llama"), teacher_dir("llama"),
                              sample_packing=False, micro_batch_size=micro, gradient_accumulation_steps=accumulation,
                              max_steps=1, learning_rate=0.05, logging_steps=1, shuffle_merged_datasets=False,
                              optimizer="sgd", max_grad_norm=0)  # the update is the gradient (Adam's first step hides its scale)
        run_train(cfg)
        from safetensors.torch import load_file

        adapters.append(load_file(str(Path(cfg.training.output_dir) / "adapter_model.safetensors")))
    moved = [name for name in adapters[0] if "lora_B" in name]
    assert moved and all(float(adapters[0][n].abs().max()) > 0 for n in moved)
    worst = max(float((adapters[0][n] - adapters[1][n]).abs().max() / adapters[0][n].abs().max()) for n in moved)
    assert worst < 1e-5, worst


def test_stop_and_resume_give_the_same_adapter(tmp_path: Path, tiny_model_dir, teacher_dir):
    """4 steps straight, or 2 steps, a checkpoint, and the same output_dir run on to 4 (auto-resume)."""
    from safetensors.torch import load_file

    from ft.commands.train import run_train

    adapters = []
    for name, stops in (("straight", [4]), ("resumed", [2, 4])):
        (tmp_path / name).mkdir()
        for steps in stops:
            cfg = _distill_config(tmp_path / name, tiny_model_dir("llama"), teacher_dir("llama"), max_steps=steps, save_steps=2)
            run_train(cfg)
        adapters.append(load_file(str(Path(cfg.training.output_dir) / "adapter_model.safetensors")))
    assert adapters[0].keys() == adapters[1].keys()
    worst = max(float((adapters[0][n] - adapters[1][n]).abs().max() / adapters[0][n].abs().max().clamp(min=1e-12))
                for n in adapters[0])
    assert worst < 1e-5, worst


def test_a_run_logs_both_terms(tmp_path: Path, tiny_model_dir, teacher_dir):
    import json

    from ft.commands.train import run_train

    cfg = _distill_config(tmp_path, tiny_model_dir("llama"), teacher_dir("llama"), val_set_size=4, max_steps=3)
    summary = run_train(cfg)
    out = Path(cfg.training.output_dir)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert len(train) == 3 and all(r["kd_loss"] > 0 and r["ce_loss"] > 0 for r in train)
    for r in train:  # the logged loss is the weighted sum of the logged terms
        assert math.isclose(r["loss"], ALPHA * T * T * r["kd_loss"] + (1 - ALPHA) * r["ce_loss"], rel_tol=1e-4)
    evaluation = next(r for r in records if "eval_loss" in r)
    assert evaluation["eval_kd_loss"] > 0 and math.isclose(summary["perplexity"], math.exp(evaluation["eval_ce_loss"]), rel_tol=1e-3)
    assert (out / "loss.png").is_file() and not any("teacher" in p.name for p in out.iterdir())


@pytest.mark.parametrize("student", ["full", "qlora"])
def test_full_and_qlora_students_train_from_a_quantized_teacher(student: str, tmp_path: Path, tiny_model_dir, teacher_dir):
    from ft.commands.train import run_train

    keys = {"adapter": None, "learning_rate": 1e-3} if student == "full" else {"adapter": "qlora", "load_in_4bit": True}
    cfg = _distill_config(tmp_path, tiny_model_dir("llama"), teacher_dir("llama"), teacher_load_in_4bit=student == "qlora",
                          max_steps=2, **keys)
    summary = run_train(cfg)
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])
    saved = {p.name for p in Path(cfg.training.output_dir).iterdir()}
    assert ("adapter_model.safetensors" in saved) is (student == "qlora") and ("model.safetensors" in saved) is (student == "full")


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path: Path, tiny_model_dir):
    from ft.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=3)
    with pytest.raises(ConfigError, match="the teacher's tokenizer .* and the model's .* differ"):
        build(_distill_config(tmp_path, tiny_model_dir("llama"), other))


@pytest.mark.parametrize("keys, words", [
    ("kd_alpha: 0.5\n", "`kd_alpha` shapes distillation from a teacher, and no `teacher_model` is given"),
    ("teacher_model: t\nkd_alpha: 1.5\n", "`kd_alpha`: Input should be less than or equal to 1"),
    ("teacher_model: t\nkd_beta: -1\n", "`kd_beta`: Input should be greater than or equal to 0"),
    ("teacher_model: t\nkd_cache: true\n", "set `kd_top_k`"),
    ("teacher_model: t\nrl: dpo\n", "distillation trains on single texts"),
    ("teacher_model: t\nfsdp: [full_shard]\n", "distillation is not supported with fsdp"),
])
def test_bad_settings_are_refused_in_one_sentence(keys: str, words: str, tmp_path: Path):
    from ft.commands.config import validation_context
    from ft.config import load_config

    (tmp_path / "cfg.yml").write_text("base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n" + keys)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "cfg.yml", context=validation_context(), warn=lambda _: None)
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_cached_top_k_equals_the_live_top_k(tmp_path: Path, tiny_model_dir, teacher_dir):
    """The teacher's top-k computed once per row (kd_cache) gives the live top-k loss and gradients (within
    round-off: the cache runs each row alone, the live teacher the packed batch) and the same top-k ids."""
    student, teacher = tiny_model_dir("llama"), teacher_dir("llama")
    results = []
    for cached in (False, True):
        (tmp_path / str(cached)).mkdir()
        trainer, model, _ = build(_distill_config(tmp_path / str(cached), student, teacher, kd_top_k=6, kd_cache=cached))
        assert (trainer.teacher is None) is cached and (trainer.teacher_cache is None) is not cached
        batch = _first_batch(trainer)
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        model.train()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=int((batch["labels"][:, 1:] != -100).sum()))
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        results.append((float(loss), grads, batch))
    (live, live_grads, batch), (cached, cached_grads, cached_batch) = results
    assert torch.equal(batch["input_ids"], cached_batch["input_ids"]) and "ft_row_ids" in cached_batch
    assert abs(live - cached) <= 1e-6 * abs(live), (live, cached)
    assert max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(live_grads, cached_grads)) < 1e-5


@pytest.mark.slow(seconds=25)
def test_a_killed_teacher_cache_build_resumes_to_the_same_cache(tmp_path: Path, tiny_model_dir, teacher_dir):
    import json
    import signal
    import time

    import ftproc
    from train_helpers import alpaca_rows

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(2600)))
    _distill_config(tmp_path, tiny_model_dir("llama"), teacher_dir("llama"), kd_top_k=4, kd_cache=True)
    clean = ftproc.run(["preprocess", "cfg.yml"], cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    [folder] = (tmp_path / "out/prepared").glob("*/teacher-*")
    whole = (folder / "train.arrow").read_bytes()
    for path in folder.iterdir():
        path.unlink()
    process = ftproc.FtProcess(["preprocess", "cfg.yml"], cwd=tmp_path)
    shards = folder / ".train-shards"
    deadline = time.monotonic() + 120
    while not (shards.is_dir() and len(list(shards.glob("0*.arrow"))) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL and not (folder / "train.arrow").exists()
    kept = len(list(shards.glob("0*.arrow")))
    again = ftproc.run(["preprocess", "cfg.yml"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert kept >= 2 and (folder / "train.arrow").read_bytes() == whole


def test_plan_counts_the_live_teacher(tmp_path: Path, tiny_model_dir, teacher_dir):
    import dataclasses

    from ft.commands.plan import plan_report
    from ft.config import load_config as load_file
    from ft.commands.config import validation_context
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    cfg = _distill_config(tmp_path, tiny_model_dir("llama"), teacher_dir("llama"), bf16=False)
    trainer, _, _ = build(cfg)
    shape = dataclasses.replace(read_shape(str(tiny_model_dir("llama"))), teacher=read_shape(str(teacher_dir("llama"))))
    plan = estimate(cfg, shape)
    assert plan.parts["teacher weights (frozen)"] == sum(p.numel() * p.element_size() for p in trainer.teacher.parameters())

    # the seed's setting (configs/), its hub names swapped for the public shapes: an 8B teacher in 4 bits fits 24 GB
    shapes = Path(__file__).parent / "data/model_configs"
    text = (Path(__file__).parents[1] / "configs/llama32-1b-distill-from-llama31-8b.yml").read_text()
    text = text.replace("unsloth/Llama-3.2-1B-Instruct", str(shapes / "llama3.2-1b.json"))
    (tmp_path / "seed.yml").write_text(text.replace("unsloth/Meta-Llama-3.1-8B-Instruct", str(shapes / "llama3-8b.json")))
    seed = load_file(tmp_path / "seed.yml", context=validation_context(), warn=lambda _: None)
    report = plan_report(seed, 24 << 30, 1, real_lengths=False)
    assert report["fits"] and 5 << 30 < report["parts"]["teacher weights (frozen)"] < 6 << 30
    assert report["peak"] < 14 << 30


def _rows_with_logprobs(tmp_path: Path, student: Path, teacher: Path, entries: int = 8, temperature: float = 2.0) -> Path:
    """Chat rows carrying the teacher's top `entries` log-probabilities per token in Axolotl's kd format (vLLM's
    {token: 'token_id:N', logprob}), aligned to the end of the row's tokens as ft tokenizes it."""
    import json

    from transformers import AutoModelForCausalLM

    from helpers import dataset, data_cfg
    from ft.data.tokenize import RowTokenizer
    from ft.tokenizer.load import adds_bos, load_tokenizer
    from ft.config.model import ModelConfig
    from train_helpers import alpaca_rows

    tokenizer = load_tokenizer(ModelConfig(base_model=str(student)))
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    rows = [{"messages": [{"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["output"]}]}
            for r in alpaca_rows(12, seed=3)]
    ds = dataset("chat_template")
    out = []
    for row in rows:
        ids = RowTokenizer(ds, data_cfg(ds, sequence_len=128), tokenizer, adds_bos(tokenizer))([row]).input_ids[0]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1, :len(tokenizer)] / temperature, -1)
        top = logp.topk(entries, -1)
        row["teacher_logprobs"] = [[{"token": f"token_id:{int(i)}", "logprob": float(v)} for v, i in zip(vs, js)]
                                   for vs, js in zip(top.values, top.indices)]  # for tokens 1..n-1: aligned to the end
        out.append(row)
    path = tmp_path / "kd_rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def test_rows_carrying_the_teachers_log_probabilities_train_like_the_live_top_k(tmp_path: Path, tiny_model_dir, teacher_dir):
    """Axolotl's kd datasets (logprobs_field): no teacher is loaded, and the loss is the live teacher's top-k loss."""
    student, teacher = tiny_model_dir("llama"), teacher_dir("llama")
    rows = _rows_with_logprobs(tmp_path, student, teacher)
    common = {"datasets": [{"path": str(rows), "type": "chat_template"}], "kd_top_k": 6, "kd_temperature": 2.0,
              "adapter": "lora", "lora_target_linear": True, "sample_packing": True, "micro_batch_size": 3,
              "kd_alpha": ALPHA, "shuffle_merged_datasets": False}
    results = []
    for name, keys in (("live", {"teacher_model": str(teacher)}),
                       ("rows", {"datasets": [{"path": str(rows), "type": "axolotl.integrations.kd.chat_template",
                                               "logprobs_field": "teacher_logprobs", "temperature": 2.0}]})):
        (tmp_path / name).mkdir()
        trainer, model, _ = build(make_config(tmp_path / name, student, **{**common, **keys}))
        assert (trainer.teacher is None) is (name == "rows")
        batch = _first_batch(trainer)
        model.train()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=int((batch["labels"][:, 1:] != -100).sum()))
        results.append((float(loss), batch["input_ids"]))
    (live, live_ids), (carried, carried_ids) = results
    assert torch.equal(live_ids, carried_ids)
    assert abs(live - carried) <= 1e-6 * abs(live), (live, carried)


@pytest.mark.parametrize("keys, words", [
    ({"teacher_model": "TEACHER", "kd_top_k": 4}, "the rows carry the teacher's log-probabilities (`logprobs_field`) and `teacher_model` is set too"),
    ({"kd_top_k": 4, "kd_temperature": 1.0}, "were made at temperature 2, and kd_temperature is 1"),
    ({}, "set `kd_top_k`"),
    ({"kd_top_k": 10}, "a position has 8 teacher entries in `logprobs_field`, fewer than kd_top_k 10"),
    ({"kd_top_k": 5000}, "`kd_top_k`: 5000 is more tokens than the vocabulary has"),
])
def test_bad_log_probability_rows_are_refused_in_one_sentence(keys, words, tmp_path: Path, tiny_model_dir, teacher_dir):
    from ft.errors import UserError

    rows = _rows_with_logprobs(tmp_path, tiny_model_dir("llama"), teacher_dir("llama"))
    keys = {k: str(teacher_dir("llama")) if v == "TEACHER" else v for k, v in keys.items()}
    entry = {"path": str(rows), "type": "chat_template", "logprobs_field": "teacher_logprobs", "temperature": 2.0}
    with pytest.raises(UserError) as info:
        build(make_config(tmp_path, tiny_model_dir("llama"), datasets=[entry], **{"kd_temperature": 2.0, **keys}))
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_zero3_is_refused_before_anything_loads(tmp_path: Path, tiny_model_dir, teacher_dir):
    from ft.commands.train import build_run
    from ft.errors import UserError

    cfg = _distill_config(tmp_path, tiny_model_dir("llama"), teacher_dir("llama"),
                          deepspeed=str(Path(__file__).parents[1] / "deepspeed_configs/zero3.json"))
    with pytest.raises(UserError, match="distillation is not supported with DeepSpeed ZeRO-3 yet"):
        build_run(cfg, 2)  # the world the launcher would give; refused before any process group is needed
