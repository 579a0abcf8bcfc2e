"""Preference training (`rl:`): the pair data, the padding-free answer log-probabilities, the losses against
the papers' formulas, the first step's exact values, and a short run that learns a preference."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from compare import relative_difference
from conftest import run_ft
from train_helpers import WORDS, build

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}


def preference_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """Pairs whose chosen answers follow a rule: words of the first half of WORDS, never the second."""
    rng = random.Random(seed)
    return [{"prompt": "Name three things: " + " ".join(rng.sample(WORDS, 3)) + "\nAnswer:",
             "chosen": " " + " ".join(rng.sample(WORDS[:8], 3)), "rejected": " " + " ".join(rng.sample(WORDS[8:], 3))}
            for _ in range(n)]


def pair_config(tmp: Path, model_dir: Path, rows: list[dict] | None = None, data: Path | None = None, lora: bool = True,
                **keys):
    """A preference config in `tmp` (LoRA, or full fine-tuning), its pairs written to tmp/pairs.jsonl (or read
    from `data`)."""
    from train_helpers import make_config

    if data is None:
        data = tmp / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in (rows or preference_rows())))
    body = {"datasets": [{"path": str(data), "type": "preference"}], "rl": "dpo", "sequence_len": 64,
            "micro_batch_size": 4, **(LORA if lora else {}), **keys}
    return make_config(tmp, model_dir, **body)


def run_training(cfg) -> Path:
    """`ft train` on the config, in a process of its own, as a user runs it; its output folder."""
    out = Path(cfg.training.output_dir)
    result = run_ft("train", "cfg.yml", cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _plain_logp(model, ids: list[int], labels: list[int]) -> float:
    """An answer's log-probability from a plain forward of its prompt and answer alone."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    return sum(float(logps[t - 1, labels[t]]) for t in range(1, len(ids)) if labels[t] != -100)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "phi3"])
def test_answer_log_probabilities_from_the_padding_free_batch_equal_a_plain_forward(tmp_path: Path, tiny_model_dir, arch):
    import torch

    trainer, model, _ = build(pair_config(tmp_path, tiny_model_dir(arch), padding_free=True))
    batch = trainer.data_collator([trainer.train_dataset[k] for k in range(3)])
    assert batch["input_ids"].shape[0] == 1 and len(batch["cu_seq_lens_q"]) == 7  # 3 pairs, 6 answers, one row
    model.eval()
    with torch.no_grad():
        sums, tokens = trainer._answers(model, batch)
    rows = [row for k in range(3) for row in trainer.train_dataset[k]["rows"]]
    for i, row in enumerate(rows):
        plain = _plain_logp(model, row["input_ids"], row["labels"])
        assert abs(float(sums[i]) - plain) <= 1e-5 * abs(plain), (i, float(sums[i]), plain)
        answer = [label for label in row["labels"][1:] if label != -100]
        assert int(tokens[i]) == len(answer) and len(answer) < len(row["input_ids"]) - 3  # the prompt carries no weight


def test_loss_and_lora_gradients_equal_the_dpo_formula_computed_pair_by_pair(tmp_path: Path, tiny_model_dir):
    import torch
    import torch.nn.functional as F

    trainer, model, _ = build(pair_config(tmp_path, tiny_model_dir("llama"), padding_free=True, rl_beta=0.3))
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference (LoRA's B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    items = [trainer.train_dataset[k] for k in range(4)]
    model.train()
    loss = trainer.compute_loss(model, trainer.data_collator(items))
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    def logp(ids, labels, reference):  # the log-probability of the answer, from a plain forward of the one row
        inputs = torch.tensor([ids])
        if reference:
            with torch.no_grad(), model.disable_adapter():
                logits = model(input_ids=inputs).logits[0]
        else:
            logits = model(input_ids=inputs).logits[0]
        target = torch.tensor(labels[1:])
        keep = target != -100
        return torch.log_softmax(logits[:-1].float(), -1)[keep].gather(-1, target[keep][:, None]).sum()

    losses = []
    for item in items:
        (c, r) = item["rows"]
        margin = (logp(c["input_ids"], c["labels"], False) - logp(c["input_ids"], c["labels"], True)) - (
            logp(r["input_ids"], r["labels"], False) - logp(r["input_ids"], r["labels"], True))
        losses.append(-F.logsigmoid(0.3 * margin))  # Rafailov et al. (2023), eq. 7
    reference = torch.stack(losses).mean()
    reference.backward()
    theirs = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert abs(float(loss) - float(reference)) <= 1e-5 * float(reference)
    assert 0.1 < float(reference) and abs(float(reference) - math.log(2)) > 1e-3  # the policy moved: not the trivial value
    assert set(ours) == set(theirs) and relative_difference(ours, theirs) < 1e-4


@pytest.mark.parametrize("rl, expected", [("dpo", math.log(2)), ("ipo", 1 / (4 * 0.1 ** 2))])
def test_the_first_logged_loss_is_the_formula_value_while_the_model_equals_its_reference(tmp_path: Path, tiny_model_dir, rl, expected):
    """LoRA's B starts at zero, so at the first step the policy is its reference: the DPO loss of every pair is
    log 2, IPO's is 1/(4β²), every reward 0."""
    out = run_training(pair_config(tmp_path, tiny_model_dir("llama"), rl=rl, max_steps=1, use_tensorboard=True))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["loss"] - expected) <= 1e-6 * expected, first
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert {"train/loss", "train/rewards/accuracies", "train/rewards/margins"} <= set(events.Tags()["scalars"])
    assert (out / "loss.png").is_file()


@pytest.mark.parametrize("rl", ["dpo", "ipo", "simpo", "orpo"])
def test_a_short_run_learns_the_preference(tmp_path: Path, tiny_model_dir, rl):
    """Chosen answers use the first half of the words: reward accuracy rises well above chance and the chosen
    answers gain log-probability on the rejected ones, on held-out pairs too."""
    keys = {"rl_beta": 0.5} if rl in ("dpo", "ipo") else {"rl_beta": 2.0} if rl == "simpo" else {}
    out = run_training(pair_config(tmp_path, tiny_model_dir("llama"), rows=preference_rows(72), rl=rl, max_steps=30,
                                   learning_rate=0.02, val_set_size=8, eval_steps=30, **keys))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluation = [r for r in records if "eval_loss" in r][-1]
    assert evaluation["eval_rewards/accuracies"] >= 0.85, evaluation
    assert evaluation["eval_rewards/margins"] > 0
    assert "perplexity" not in evaluation
    first, last = records[0], [r for r in records if "loss" in r][-1]
    gap = lambda r: r["logps/chosen"] - r["logps/rejected"]  # noqa: E731
    assert gap(last) > gap(first) + 1.0, (first, last)


def test_chat_template_pairs_render_the_prompt_once_and_train_only_the_answer(tmp_path: Path, tiny_model_dir):
    """Axolotl's chat-template preference type: the prompt's turns rendered by the template, each answer an
    assistant turn; special tokens exactly once, the prompt never trained, the same cache as SFT."""
    from ft.data.labels import IGNORE
    from ft.tokenizer.load import load_tokenizer

    rows = [{"conversation": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Cat or dog?"}],
             "good": {"role": "assistant", "content": "cat"}, "bad": "dog"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(rows[0]) + "\n")
    from train_helpers import make_config

    cfg = make_config(tmp_path, tiny_model_dir("llama"), datasets=[{
        "path": str(data), "type": "chat_template.default", "field_messages": "conversation", "field_chosen": "good",
        "field_rejected": "bad"}], rl="dpo", **LORA)
    from ft.commands.preprocess import prepare_data

    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_data(cfg, tokenizer)
    ids = prepared.train.column("input_ids").to_pylist()
    labels = prepared.train.column("labels").to_pylist()
    assert len(ids) == 2  # one pair: chosen, then rejected
    for row, label, answer in zip(ids, labels, ("cat", "dog")):
        text = tokenizer.decode(row)
        assert text.count("<|im_start|>") == 3 and text.count("Be brief.") == 1
        trained = tokenizer.decode([t for t in label if t != IGNORE])
        assert trained.startswith(answer) and trained.rstrip().endswith("<|im_end|>") and "Cat or dog" not in trained
    prompt = [t for t, label in zip(ids[0], labels[0]) if label == IGNORE]
    assert prompt == [t for t, label in zip(ids[1], labels[1]) if label == IGNORE]  # the same prompt, untrained
    again = prepare_data(cfg, tokenizer)
    assert again.hit  # the prepared-data cache, as for SFT


def test_argilla_rows_are_the_pairs_of_their_shared_conversation(tiny_tokenizer):
    """Axolotl's `chat_template.argilla` (its ORPO example's UltraFeedback rows): each side holds the whole
    conversation; the pair equals chat_template.default's pair of the shared turns and the two last turns."""
    from ft.data.formats import build_format
    from ft.errors import DataError
    from helpers import dataset

    user = {"role": "user", "content": "Cat or dog?"}
    row = {"prompt": "Cat or dog?", "system": "Be brief.", "chosen": [user, {"role": "assistant", "content": "cat"}],
           "rejected": [user, {"role": "assistant", "content": "dog"}]}
    argilla = build_format(dataset("chat_template.argilla"), tiny_tokenizer)
    default = build_format(dataset("chat_template.default"), tiny_tokenizer)
    same = {"messages": [{"role": "system", "content": "Be brief."}, user], "chosen": "cat", "rejected": "dog"}
    assert argilla.pair(row) == default.pair(same)
    assert "Be brief." in argilla.pair(row)[0][0].text and argilla.pair(row)[1][1].text.startswith("dog")
    with pytest.raises(DataError, match="differ before their last turn"):
        argilla.pair({**row, "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "dog"}]})
    with pytest.raises(DataError, match="must be the assistant's answer"):
        argilla.pair({**row, "rejected": [user]})


def test_pairs_are_shuffled_and_split_as_pairs(tmp_path: Path, tiny_model_dir):
    from ft.commands.preprocess import prepare_data
    from ft.tokenizer.load import load_tokenizer

    cfg = pair_config(tmp_path, tiny_model_dir("llama"), val_set_size=5)
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_data(cfg, tokenizer)
    for table, pairs in ((prepared.train, 27), (prepared.eval, 5)):
        rows = table.column("input_ids").to_pylist()
        assert all(ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1 for ids in rows)  # BOS once
        assert all(ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1 for ids in rows)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rows]
        assert len(texts) == 2 * pairs
        for chosen, rejected in zip(texts[0::2], texts[1::2]):
            assert chosen.split("Answer:")[0] == rejected.split("Answer:")[0]  # the two answers of one prompt
            assert set(chosen.split("Answer:")[1].split()) <= set(WORDS[:8])
            assert set(rejected.split("Answer:")[1].split()) <= set(WORDS[8:])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in _records(out) if "loss" in r]


@pytest.mark.slow(seconds=35)
def test_the_reference_of_a_continued_adapter_is_that_adapter_and_full_fine_tuning_copies_the_model(tmp_path: Path, tiny_model_dir):
    """With lora_model_dir the reference is the continued adapter, frozen: the first loss is log 2 again (the base
    alone, the adapter switched off, would not give it). Full fine-tuning keeps a frozen copy: log 2 as well."""
    first = tmp_path / "first"
    first.mkdir()
    run_training(pair_config(first, tiny_model_dir("llama"), max_steps=6, learning_rate=0.02, rl_beta=0.5))
    again = tmp_path / "again"
    again.mkdir()
    out = run_training(pair_config(again, tiny_model_dir("llama"), max_steps=2, rl_beta=0.5, lora_model_dir=str(first / "out")))
    start = _records(out)[0]
    assert abs(start["loss"] - math.log(2)) <= 1e-6, start
    assert _records(first / "out")[-2]["rewards/margins"] != 0  # the continued adapter moved away from the base
    full = tmp_path / "full"
    full.mkdir()
    cfg = pair_config(full, tiny_model_dir("llama"), lora=False, max_steps=2, learning_rate=1e-4)
    result = run_ft("train", "cfg.yml", cwd=full)
    assert result.returncode == 0 and "reference: a frozen copy of the model" in result.stderr, result.stderr[-2000:]
    assert abs(_records(Path(cfg.training.output_dir))[0]["loss"] - math.log(2)) <= 1e-6


@pytest.mark.slow(seconds=45)
def test_a_stopped_preference_run_resumes_to_the_same_adapter_and_merges(tmp_path: Path, tiny_model_dir):
    """The run as it stood after its step-2 checkpoint (as a killed run leaves it), started again, ends where the
    uninterrupted run did; the adapter merges into a model that loads, and ft inference answers with it."""
    import shutil

    from safetensors.torch import load_file

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir()
    keys = {"max_steps": 4, "save_steps": 2, "learning_rate": 0.01}
    run_training(pair_config(straight, tiny_model_dir("llama"), **keys))
    shutil.copytree(straight / "out/checkpoint-2", stopped / "out/checkpoint-2")
    pair_config(stopped, tiny_model_dir("llama"), **keys)
    result = run_ft("train", "cfg.yml", cwd=stopped)
    assert result.returncode == 0 and "resuming from" in result.stderr, result.stderr[-2000:]
    a, b = _losses(straight / "out"), _losses(stopped / "out")
    assert len(a) == 4 and len(b) == 2 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a[2:], b)), (a, b)
    assert relative_difference(load_file(str(straight / "out/adapter_model.safetensors")),
                               load_file(str(stopped / "out/adapter_model.safetensors"))) < 1e-5
    merged = run_ft("merge-lora", "cfg.yml", cwd=stopped)
    assert merged.returncode == 0, merged.stderr[-2000:]
    answer = run_ft("inference", "cfg.yml", "--prompt", "Name three things: cat dog sun\nAnswer:", "--max-new-tokens", "4",
                    cwd=stopped)
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]


@pytest.mark.slow(seconds=33)
@pytest.mark.parametrize("backend", ["ddp", "zero2"])
def test_two_processes_train_pairs_as_one_process_does(tmp_path: Path, tiny_model_dir, backend):
    """Two processes of two pairs each average the same loss as one process of four pairs."""
    from conftest import ROOT

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    extra = {"deepspeed": str(ROOT / "deepspeed_configs/zero2.json")} if backend == "zero2" else {}
    run_training(pair_config(one, tiny_model_dir("llama"), max_steps=3, micro_batch_size=4, optimizer="adamw_torch", **extra))
    pair_config(two, tiny_model_dir("llama"), max_steps=3, micro_batch_size=2, optimizer="adamw_torch", **extra)
    result = run_ft("train", "cfg.yml", "--num-processes", "2", cwd=two, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 3 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    accuracy = [r["rewards/accuracies"] for r in _records(two / "out") if "loss" in r]
    assert accuracy == [r["rewards/accuracies"] for r in _records(one / "out") if "loss" in r]  # averaged over processes


@pytest.mark.slow(seconds=75)
def test_precomputed_reference_log_probabilities_equal_the_live_reference_and_are_never_served_for_another_model(
        tmp_path: Path, tiny_model_dir):
    """precompute_ref_log_probs: the same losses as a reference forward per step; the values are cached beside
    the prepared data and found again by a run of the same data and model, not by one of another model; full
    fine-tuning needs no frozen copy with them."""
    shared = tmp_path / "prepared"
    live, first, second, other = (tmp_path / name for name in ("live", "first", "second", "other"))
    for folder in (live, first, second, other):
        folder.mkdir()
    keys = {"max_steps": 3, "learning_rate": 0.01, "val_set_size": 4, "eval_steps": 3, "dataset_prepared_path": str(shared),
            "data": live / "pairs.jsonl"}
    (live / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows()))
    run_training(pair_config(live, tiny_model_dir("llama"), **keys))
    pair_config(first, tiny_model_dir("llama"), precompute_ref_log_probs=True, **keys)
    made = run_ft("train", "cfg.yml", cwd=first)
    assert made.returncode == 0 and "reference log-probabilities of 56 train answers computed" in made.stderr, made.stderr[-2000:]
    a, b = _records(live / "out"), _records(first / "out")
    for x, y in zip(a, b):
        for key in ("loss", "eval_loss", "rewards/margins"):
            assert (key in x) == (key in y) and abs(x.get(key, 0) - y.get(key, 0)) <= 1e-5 * max(1.0, abs(x.get(key, 0))), (x, y)
    pair_config(second, tiny_model_dir("llama"), precompute_ref_log_probs=True, **keys)
    found = run_ft("train", "cfg.yml", cwd=second)
    assert "reference log-probabilities of 56 train answers found" in found.stderr, found.stderr[-2000:]
    assert _losses(second / "out") == _losses(first / "out")
    pair_config(other, tiny_model_dir("qwen2"), precompute_ref_log_probs=True, **keys)
    elsewhere = run_ft("train", "cfg.yml", cwd=other)  # the same tokenizer and data, another model
    assert "reference log-probabilities of 56 train answers computed" in elsewhere.stderr, elsewhere.stderr[-2000:]
    assert len(list(shared.rglob("reference-*-train.npy"))) == 2

    full = tmp_path / "full"
    full.mkdir()
    pair_config(full, tiny_model_dir("llama"), lora=False, max_steps=2, learning_rate=1e-4, precompute_ref_log_probs=True)
    result = run_ft("train", "cfg.yml", cwd=full)
    assert result.returncode == 0 and "computed once and cached" in result.stderr, result.stderr[-2000:]
    assert abs(_losses(full / "out")[0] - math.log(2)) <= 1e-6


def test_plan_and_validate_describe_a_preference_run(tmp_path: Path, tiny_model_dir):
    """ft plan counts a pair's two sequences per micro batch item and a full fine-tuning run's frozen copy;
    ft validate says what the run does."""
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape
    from train_helpers import make_config

    model = tiny_model_dir("llama")
    pairs = pair_config(tmp_path, model)
    (tmp_path / "sft").mkdir()
    plain = make_config(tmp_path / "sft", model, sequence_len=64, micro_batch_size=4, **LORA)
    shape = read_shape(str(model))
    assert estimate(pairs, shape).tokens == 2 * estimate(plain, shape).tokens == 2 * 4 * 64
    full = pairs.model_copy(update={"adapter": pairs.adapter.model_copy(update={"adapter": None})})
    assert estimate(full, shape).parts["frozen reference copy"] == shape.total_params() * 4
    validate = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert validate.returncode == 0 and "# preference: dpo, β 0.1, reference: the model with the adapter off" in validate.stdout
    assert "pairs: 4 pair(s) per micro batch" in validate.stdout


@pytest.mark.slow(seconds=55)
def test_sigkill_at_random_moments_of_a_preference_run_loses_nothing(tmp_path: Path, tiny_model_dir):
    """The crash harness (tests/crash_harness.py) on a DPO run with checkpoints and evaluation: SIGKILLs at random
    moments (start, steps, checkpoint writes, the final save), then the same command to the end, twice; the
    adapter equals the uninterrupted run's to fp32 round-off, and a finished run is left alone."""
    import crash_harness as harness

    keys = {"max_steps": 8, "save_steps": 2, "save_total_limit": 2, "val_set_size": 4, "eval_steps": 4,
            "micro_batch_size": 2, "learning_rate": 0.005, "output_dir": "out"}
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_rows(40)))
    folders = []
    for name in ("reference", "trial-0", "trial-1"):
        (tmp_path / name).mkdir()
        pair_config(tmp_path / name, tiny_model_dir("llama"), data=data, **keys)
        folders.append(tmp_path / name)
    done = harness.run(folders[0], "train", "cfg.yml")
    assert done.returncode == 0, done.stderr[-3000:]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        trials = list(pool.map(lambda fs: harness.trial(fs[0], fs[1], 3), [(folders[1], 7), (folders[2], 8)]))
    want = harness.adapter(folders[0])
    assert sum(k.killed for t in trials for k in t.kills) >= 3, [t.kills for t in trials]
    for folder, t in zip(folders[1:], trials):
        assert not t.final, f"kills {t.kills}: the run after the kills failed:\n{t.final}"
        assert harness.difference(harness.adapter(folder), want) < 1e-6, t.kills
        assert harness.summary_of(folder)["steps"] == 8
    again = harness.run(folders[0], "train", "cfg.yml")
    assert again.returncode == 0 and "finished already" in again.stderr, again.stderr[-2000:]


def test_chatml_ultra_rows_render_as_axolotl_writes_them(tiny_tokenizer):
    from ft.data.formats import Segment, build_format
    from ft.config.data import DatasetConfig

    fmt = build_format(DatasetConfig(path="x", type="chatml.ultra"), tiny_tokenizer)
    row = {"system": "Be kind.", "prompt": "Hi?", "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No."}]}
    head = "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.pair(row) == ([Segment(head, False), Segment("Hello!<|im_end|>", True)],
                             [Segment(head, False), Segment("No.<|im_end|>", True)])
    assert fmt.prompt({**row, "system": None}) == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"


def kto_rows(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 3)
        good = i % 3 != 0
        rows.append({"prompt": "Reverse: " + " ".join(words), "label": good,
                     "completion": " ".join(words[::-1] if good else words)})
    return rows


def kto_config(tmp: Path, model_dir: Path, **keys):
    data = tmp / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in kto_rows()))
    keys = {"rl": "kto", "rl_beta": 0.5, "kto_desirable_weight": 0.7, "sequence_len": 96, **keys}
    return pair_config(tmp, model_dir, data=data, datasets=[{"path": str(data), "type": "llama3.ultra"}], **keys)


def test_kto_rows_are_their_own_text_and_their_prompt_with_the_row_befores_answer(tmp_path: Path, tiny_model_dir):
    from ft.data.formats import Segment, build_format
    from ft.config.data import DatasetConfig

    rows = kto_rows(3)
    fmt = build_format(DatasetConfig(path="x", type="llama3.ultra"), None)
    mixed = fmt.mismatched(rows)
    head = ("<|start_header_id|>user<|end_header_id|>\n\n" + rows[1]["prompt"] + "<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert fmt.pair(mixed[1]) == ([Segment(head, False), Segment(rows[1]["completion"] + "<|eot_id|>", True)],
                                  [Segment(head, False), Segment(rows[0]["completion"] + "<|eot_id|>", True)])
    assert fmt.pair(mixed[0])[1][1].text == rows[2]["completion"] + "<|eot_id|>"  # the first takes the last's
    trainer, _, tokenizer = build(kto_config(tmp_path, tiny_model_dir("llama")))
    table = trainer.train_dataset.rows
    signs = table.desirable.to_pylist()
    assert signs[0::2] == signs[1::2] and set(signs) == {0, 1}  # a pair's rows carry its answer's label


def test_kto_loss_and_gradients_equal_the_formula_row_by_row(tmp_path: Path, tiny_model_dir):
    import torch

    from ft.train.batches import DESIRABLE

    trainer, model, _ = build(kto_config(tmp_path, tiny_model_dir("llama"), padding_free=True))
    items = [trainer.train_dataset[k] for k in range(6)]
    batch = trainer.data_collator(items)
    assert set(batch[DESIRABLE].tolist()) == {0, 1}
    for seed in range(1, 20):  # an adapter under which the mismatched texts' KL estimate is above 0 (not clamped)
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        if trainer._sums["train"].get("kl", 0.0) > 0:
            break
        trainer._sums["train"] = {}
    assert trainer._sums["train"]["kl"] > 0
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    def ratio(row):  # log π − log ρ of the row's answer, each from a plain forward of the row alone
        ids, target = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"][1:])
        keep = target != -100
        with torch.no_grad(), model.disable_adapter():
            ref = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)[keep].gather(-1, target[keep][:, None]).sum()
        own = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)[keep].gather(-1, target[keep][:, None]).sum()
        return own - ref

    z = torch.stack([ratio(item["rows"][1]).detach() for item in items]).mean().clamp(min=0)
    assert abs(float(z) - trainer._sums["train"]["kl"]) <= 1e-4  # a mean of differences of sums of ~100 log-probabilities
    losses = []
    for item, good in zip(items, batch[DESIRABLE].tolist()):
        r = ratio(item["rows"][0])
        losses.append(0.7 * (1 - torch.sigmoid(0.5 * (r - z))) if good else 1 - torch.sigmoid(0.5 * (z - r)))
    expected = torch.stack(losses).mean()
    expected.backward()
    theirs = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert abs(float(loss) - float(expected)) <= 1e-5 * float(expected)
    assert set(ours) == set(theirs) and relative_difference(ours, theirs) < 1e-4


def test_a_kto_run_trains_and_its_rows_need_rl_kto(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    cfg = kto_config(tmp_path, tiny_model_dir("llama"), max_steps=3)
    trainer, model, _ = build(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert all(not torch_equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    logged = _records(Path(cfg.training.output_dir))
    assert all("kl" in r for r in logged if "loss" in r)
    with pytest.raises(ConfigError, match="set `rl: kto`"):
        kto_config(tmp_path, tiny_model_dir("llama"), rl="dpo")
    with pytest.raises(ConfigError, match="give it a KTO type"):
        pair_config(tmp_path, tiny_model_dir("llama"), rl="kto")


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b.detach())
