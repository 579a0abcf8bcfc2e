"""Benchmark evaluation (ft.evaluate.choices, harness, compare, judge, the bertscore metric): multiple-choice
log-likelihoods equal plain forwards on every tiny architecture and the adapters; acc and acc_norm equal
lm-evaluation-harness's own on the same local task; the harness scores the adapter, not the bare base; a killed
multiple-choice eval resumes to the same bytes; the bootstrap interval of a run against itself holds 0 and
against a clearly better one does not; the judge's verdicts mirror when the runs swap."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import ftproc
from conftest import run_ft

WORDS = "cat dog sun moon tree river stone bird fish cloud rain snow wind fire leaf".split()


def mc_rows(n: int = 24, seed: int = 0) -> list[dict]:
    """Reverse-the-words questions with four choices of different lengths; the answer given as index, letter
    or text in turn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 2 + i % 4)
        right = " ".join(reversed(words))
        choices = [right] + [" ".join(rng.sample(WORDS, rng.randint(1, 5))) for _ in range(3)]
        rng.shuffle(choices)
        k = choices.index(right)
        answer = [k, "ABCD"[k], right][i % 3]
        rows.append({"question": "Reverse the words.", "input": " ".join(words), "choices": choices, "answer": answer})
    return rows


def _config(tmp_path: Path, model: Path, extra: str = "") -> Path:
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows()))
    (tmp_path / "cfg.yml").write_text(f"base_model: {model}\ndatasets:\n  - path: {tmp_path / 'mc.jsonl'}\n    type: alpaca\n"
                                      f"output_dir: {tmp_path / 'out'}\neval_batch_size: 4\n{extra}")
    return tmp_path / "cfg.yml"


def _plain(model, context: tuple, choice: tuple) -> float:
    ids = torch.tensor([list(context + choice)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -ids.shape[1]:].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(context) - 1 + k, t] for k, t in enumerate(choice)))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "phi3", "llama+lora", "llama+prompt_tuning"])
def test_choice_loglikelihoods_equal_plain_forwards(arch: str, tmp_path: Path, tiny_model_dir):
    """Batched, the prompts' cache shared across choices (or whole rows for prompt tuning): each choice's
    log-likelihood equals one plain forward of prompt + choice, within 1e-5 relative."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from ft.commands.config import load
    from ft.commands.eval import load_model, test_rows
    from ft.evaluate.choices import choice_rows, score_batch, shares_prompt

    name, _, method = arch.partition("+")
    cfg = load(_config(tmp_path, tiny_model_dir(name)))
    ds, raw = test_rows(cfg, str(tmp_path / "mc.jsonl"))
    model, tokenizer = load_model(cfg, "base")
    if method:
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if method == "lora" else \
            PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM")
        model = get_peft_model(model, config).eval()
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)  # a trained adapter: every weight matters
        assert shares_prompt(model) == (method == "lora")
    rows, skipped = choice_rows(raw, ds, cfg.data, tokenizer)
    assert skipped == 0 and len({len(r.context_ids) for r in rows}) > 1 and len({len(c) for r in rows for c in r.choice_ids}) > 3
    batched = score_batch(model, rows[:8], tokenizer.pad_token_id)
    for r, lls in zip(rows[:8], batched):
        for choice, ll in zip(r.choice_ids, lls):
            want = _plain(model, r.context_ids, choice)
            assert abs(ll - want) <= 1e-5 * abs(want), (arch, ll, want)


def test_choices_are_the_tokens_training_takes_the_loss_on(tmp_path: Path, tiny_model_dir):
    from ft.commands.config import load
    from ft.commands.eval import test_rows
    from ft.data.tokenize import RowTokenizer
    from ft.evaluate.choices import choice_rows
    from ft.tokenizer.load import adds_bos, load_tokenizer

    cfg = load(_config(tmp_path, tiny_model_dir("llama")))
    tokenizer = load_tokenizer(cfg.model)
    ds, raw = test_rows(cfg, str(tmp_path / "mc.jsonl"))
    rows, _ = choice_rows(raw[:4], ds, cfg.data, tokenizer)
    for r, row in zip(rows, raw):
        as_trained = [{"instruction": row["question"], "input": row["input"], "output": c} for c in row["choices"]]
        t = RowTokenizer(ds, cfg.data, tokenizer, adds_bos(tokenizer))(as_trained)
        for ids, choice in zip(t.input_ids, r.choice_ids):
            assert tuple(ids[:-1]) == r.context_ids + choice  # training's tokens, its end of sequence aside


def test_acc_and_acc_norm_equal_lm_eval_on_the_same_local_task(tmp_path: Path, tiny_model_dir):
    """ft's scorer and the harness side by side: the task holds the prompts as ft renders them; the
    per-choice log-likelihoods agree and so do acc and acc_norm, row for row. (The prompts end in no space:
    lm-eval moves a prompt's trailing spaces into every choice, which shifts acc_norm; docs/evaluation.md.)"""
    lm_eval = pytest.importorskip("lm_eval")  # in the suite's environment (dev extras); a GPU machine may lack it
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from ft.commands.config import load
    from ft.commands.eval import load_model, run_eval

    cfg = load(_config(tmp_path, tiny_model_dir("qwen2")))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"datasets": (cfg.data.datasets[0].model_copy(update={"type": "completion"}),)})})
    rows = [{"question": f"Reversed, {r['input']} is", "choices": [" " + c for c in r["choices"]],
             "answer": " " + r["answer"] if r["answer"] in r["choices"] else r["answer"]} for r in mc_rows()]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ours = run_eval(cfg, str(tmp_path / "mc.jsonl"), None, "base")
    written = {r["id"]: r for r in map(json.loads, (tmp_path / "out/eval-base-choices/predictions.jsonl").read_text().splitlines())}
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rows.jsonl").write_text("".join(json.dumps({"prompt": written[i]["prompt"], "choices": written[i]["choices"],
                                                          "answer": written[i]["answer"]}) + "\n" for i in sorted(written)))
    (tasks / "reverse.yaml").write_text(f"task: ft_reverse\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
                                        f"{tasks / 'rows.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
                                        "doc_to_text: '{{prompt}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
                                        "target_delimiter: ''\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    model, tokenizer = load_model(cfg, "base")
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, add_bos_token=True),
                                  tasks=["ft_reverse"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
    theirs = out["results"]["ft_reverse"]
    assert (ours["acc"], ours["acc_norm"]) == (round(theirs["acc,none"], 4), round(theirs["acc_norm,none"], 4))
    for sample in out["samples"]["ft_reverse"]:
        mine = written[sorted(written)[sample["doc_id"]]]
        lls = [ll for ll, _ in sample["filtered_resps"]]
        assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(mine["loglikelihoods"], lls)), (mine["loglikelihoods"], lls)
        assert (mine["scores"]["acc"], mine["scores"]["acc_norm"]) == (sample["acc"], sample["acc_norm"])


@pytest.mark.slow(seconds=40)
def test_the_harness_scores_the_adapter_and_equals_the_merged_model(tmp_path: Path, tiny_model_dir):
    """A task that training changes (the answer is always `blue`): the base picks it at chance, the trained
    adapter always, and the merged model as the adapter does."""
    pytest.importorskip("lm_eval")
    from ft.commands.config import load
    from ft.commands.eval import run_harness
    from ft.commands.train import run_train
    from ft.model.merge import merge_lora

    colors = ["red", "green", "blue", "cat", "moon", "stone"]
    rows = [{"instruction": "Which color is the sky?", "output": "blue"}] * 16
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = [{"prompt": "", "choices": random.Random(i).sample(colors, 4), "answer": 0} for i in range(12)]
    for i, t in enumerate(task):
        t["choices"] = ["blue"] + [c for c in t["choices"] if c != "blue"][:3]
        random.Random(100 + i).shuffle(t["choices"])
        t["answer"] = t["choices"].index("blue")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rows.jsonl").write_text("".join(json.dumps(t) + "\n" for t in task))
    prompt = "Below is an instruction that describes a task. Write a response that appropriately completes the request." \
             "\\n\\n### Instruction:\\nWhich color is the sky?\\n\\n### Response:\\n"
    (tasks / "sky.yaml").write_text(f"task: ft_sky\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'rows.jsonl'}\n"
                                    f"test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{prompt}\"\n"
                                    "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\ntarget_delimiter: ''\n"
                                    "metric_list:\n  - metric: acc\n")
    (tmp_path / "cfg.yml").write_text(
        f"base_model: {tiny_model_dir('llama')}\ndatasets:\n  - path: {tmp_path / 'train.jsonl'}\n    type: alpaca\n"
        f"output_dir: {tmp_path / 'out'}\nadapter: lora\nlora_r: 8\nlora_target_linear: true\nlearning_rate: 0.01\n"
        f"max_steps: 30\nmicro_batch_size: 4\nlm_eval_tasks: [ft_sky]\nlm_eval_include_path: {tasks}\nlm_eval_batch_size: 4\n"
        "use_tensorboard: false\n")
    cfg = load(tmp_path / "cfg.yml")
    run_train(cfg)  # lm_eval_post_train: the trained model scored in memory at the end
    after_training = json.loads((tmp_path / "out/eval-adapter/lm_eval_results.json").read_text())["results"]["ft_sky"]["acc"]
    merge_lora(cfg.model, tmp_path / "out", tmp_path / "out/merged")
    base, adapter, merged = (run_harness(cfg, ("ft_sky",), None, which)["ft_sky"]["acc"] for which in ("base", "adapter", "merged"))
    assert adapter == after_training == merged == 1.0 and base < 0.75, (base, adapter, merged, after_training)


@pytest.mark.slow
def test_a_killed_multiple_choice_eval_resumes_to_the_same_bytes(tmp_path: Path, tiny_model_dir):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for folder in (whole, cut):
        folder.mkdir()
        _config(folder, tiny_model_dir("llama"))
        (folder / "cfg.yml").write_text((folder / "cfg.yml").read_text().replace("eval_batch_size: 4", "eval_batch_size: 1"))
        (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows(160)))
    assert run_ft("eval", "cfg.yml", "--data", "mc.jsonl", "--base-only", cwd=whole).returncode == 0
    want = (whole / "out/eval-base-choices/predictions.jsonl").read_bytes()
    proc = ftproc.FtProcess(["eval", "cfg.yml", "--data", "mc.jsonl", "--base-only"], cut, {**os.environ, "OMP_NUM_THREADS": "1"})
    path = cut / "out/eval-base-choices/predictions.jsonl"
    deadline = time.monotonic() + 120
    while (not path.is_file() or path.read_bytes().count(b"\n") < 3) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    proc.output()
    assert path.read_bytes().count(b"\n") < want.count(b"\n")
    with open(path, "ab") as f:
        f.write(b'{"answer": 2, "choi')  # a line cut off mid-write
    assert run_ft("eval", "cfg.yml", "--data", "mc.jsonl", "--base-only", cwd=cut).returncode == 0
    assert path.read_bytes() == want
    assert json.loads((cut / "out/eval-base-choices/eval_results.json").read_text()) == \
        json.loads((whole / "out/eval-base-choices/eval_results.json").read_text())


def _predictions(path: Path, right: list[bool]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Say {i}.", "prediction": str(i) if ok else "no", "reference": str(i),
                                        "loss": 2.0 if ok else 3.0, "tokens": 2, "scores": {"exact_match": 100.0 * ok}}) + "\n"
                            for i, ok in enumerate(right)))
    return path


def test_the_bootstrap_interval_holds_zero_for_a_run_against_itself_and_not_against_a_better_one(tmp_path: Path):
    from ft.evaluate.compare import compare

    rng = random.Random(0)
    a = _predictions(tmp_path / "a/predictions.jsonl", [rng.random() < 0.4 for _ in range(80)])
    noisy = _predictions(tmp_path / "n/predictions.jsonl", [rng.random() < 0.4 for _ in range(80)])
    better = _predictions(tmp_path / "b/predictions.jsonl", [rng.random() < 0.9 for _ in range(80)])
    itself, chance, real = compare(a, a), compare(a, noisy), compare(a, better)
    for name in ("exact_match", "loss"):
        assert itself["metrics"][name]["low"] <= 0 <= itself["metrics"][name]["high"] and not itself["metrics"][name]["real"]
        assert real["metrics"][name]["real"] and (real["metrics"][name]["low"] > 0) == (name == "exact_match")
    m = chance["metrics"]["exact_match"]
    assert m["low"] < m["difference"] < m["high"] and m["high"] - m["low"] > 10  # a real spread, not a point
    assert real["most_apart"] and all(r["exact_match"]["a"] != r["exact_match"]["b"] for r in real["most_apart"])


def test_compare_from_the_command_line_writes_a_table_a_plot_and_judges_both_orders(tmp_path: Path, tiny_model_dir):
    from ft.evaluate.compare import compare

    rng = random.Random(1)
    a = _predictions(tmp_path / "runA/eval-adapter/predictions.jsonl", [rng.random() < 0.5 for _ in range(6)])
    b = _predictions(tmp_path / "runB/eval-adapter/predictions.jsonl", [rng.random() < 0.5 for _ in range(6)])
    (tmp_path / "cfg.yml").write_text(f"base_model: {tiny_model_dir('llama')}\ndatasets:\n  - path: x.jsonl\n    type: alpaca\n"
                                      f"output_dir: {tmp_path / 'out'}\n")
    result = run_ft("eval", "cfg.yml", "--compare", "runA", "runB", "--judge", str(tiny_model_dir("llama")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "95% interval" in result.stdout and "judge" in result.stdout
    assert (tmp_path / "out/compare/compare.png").stat().st_size > 1000
    forward = json.loads((tmp_path / "out/compare/compare.json").read_text())["judge"]
    backward = compare(b, a, judge=str(tiny_model_dir("llama")))["judge"]
    mirror = {"win": "loss", "loss": "win", "tie": "tie"}
    assert backward["verdicts"] == {i: mirror[v] for i, v in forward["verdicts"].items()}
    assert (forward["wins"], forward["ties"], forward["losses"]) == (backward["losses"], backward["ties"], backward["wins"])
    assert forward["wins"] + forward["ties"] + forward["losses"] == 6


def test_bertscore_from_a_local_encoder(tmp_path: Path, tiny_model_dir):
    pytest.importorskip("bert_score")
    from transformers import BertConfig, BertModel

    from ft.evaluate.metrics import corpus_scores
    from ft.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 512
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")

    class E:
        bertscore_model, bertscore_num_layers = str(tmp_path / "bert"), None

    same = corpus_scores("bertscore", ["the cat sat on the mat"], ["the cat sat on the mat"], E)
    other = corpus_scores("bertscore", ["the cat sat on the mat"], ["a dog ran far away"], E)
    assert abs(same["bertscore_f1"] - 100) < 1e-3 and other["bertscore_f1"] < 99
    _config(tmp_path, tiny_model_dir("llama"), f"eval_causal_lm_metrics: [exact_match, bertscore]\nbertscore_model: {tmp_path / 'bert'}\n")
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": w}) + "\n" for w in WORDS[:4]))
    result = run_ft("eval", "cfg.yml", "--data", "qa.jsonl", "--base-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    scored = json.loads((tmp_path / "out/eval-base/eval_results.json").read_text())
    assert 0 < scored["bertscore_f1"] <= 100


@pytest.mark.parametrize("extra, args, words", [
    ("", ("--data", "bad.jsonl"), ("row 0", "the answer `E` points past the 4 choices")),
    ("", ("--tasks", "no_such_task"), ("lm-eval knows no task `no_such_task`",)),
    ("eval_causal_lm_metrics: [bertscore]\n", ("--data", "mc.jsonl"), ("the metric `bertscore` needs `bertscore_model`",)),
    ("", ("--judge", "j"), ("--judge judges the two runs of --compare",)),
    ("", ("--compare", "nowhere", "elsewhere"), ("no predictions in nowhere",)),
], ids=["answer past the choices", "unknown lm-eval task", "bertscore without a model", "judge alone", "compare nothing"])
def test_bad_benchmark_input_is_one_sentence(extra, args, words, tmp_path: Path, tiny_model_dir):
    if "--tasks" in args:
        pytest.importorskip("lm_eval")
    _config(tmp_path, tiny_model_dir("llama"), extra)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "Pick.", "choices": ["a", "b", "c", "d"], "answer": "E"}) + "\n")
    result = run_ft("eval", "cfg.yml", "--base-only", *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]
