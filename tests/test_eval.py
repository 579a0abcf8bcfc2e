"""`ft eval`: prompts as training built them, batched greedy generation equal to one row at a time, scores
equal to the metric libraries' own, predictions.jsonl resumable to the byte, bad input in one sentence."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import ftproc
from conftest import DATA, run_ft

ALPACA = DATA / "alpaca.jsonl"


def _config(tmp_path: Path, model: Path, extra: str = "", new_tokens: int = 12) -> Path:
    (tmp_path / "cfg.yml").write_text(f"base_model: {model}\ndatasets:\n  - path: {ALPACA}\n    type: alpaca\n"
                                      f"output_dir: {tmp_path / 'out'}\neval_max_new_tokens: {new_tokens}\n{extra}")
    return tmp_path / "cfg.yml"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "phi3"])
def test_batched_greedy_generation_equals_each_row_alone(arch, tmp_path: Path, tiny_model_dir):
    """Left padding and position ids: a batch of prompts of different lengths gives, token for token, what
    each prompt alone gives."""
    from ft.commands.config import load
    from ft.commands.eval import load_model, test_rows
    from ft.evaluate.predict import eval_rows, generate_batch

    cfg = load(_config(tmp_path, tiny_model_dir(arch)))
    ds, raw = test_rows(cfg, str(ALPACA))
    model, tokenizer = load_model(cfg, "base")
    rows, _ = eval_rows(raw[:6], ds, cfg.data, tokenizer)
    assert len({len(r.prompt_ids) for r in rows}) > 1  # prompts of several lengths: the batch is padded
    together = generate_batch(model, tokenizer, rows, cfg.evaluation)
    alone = [generate_batch(model, tokenizer, [r], cfg.evaluation)[0] for r in rows]
    assert together == alone
    assert all(a for a in alone)


def test_prompts_are_the_training_tokens_before_the_answer(tmp_path: Path, tiny_model_dir):
    from ft.commands.config import load
    from ft.commands.eval import test_rows
    from ft.data.tokenize import RowTokenizer
    from ft.evaluate.predict import eval_rows
    from ft.tokenizer.load import adds_bos, load_tokenizer

    cfg = load(_config(tmp_path, tiny_model_dir("llama")))
    tokenizer = load_tokenizer(cfg.model)
    ds, raw = test_rows(cfg, str(ALPACA))
    rows, _ = eval_rows(raw[:3], ds, cfg.data, tokenizer)
    trained = RowTokenizer(ds, cfg.data, tokenizer, adds_bos(tokenizer))(raw[:3])
    for r, ids in zip(rows, trained.input_ids):
        assert ids[: len(r.prompt_ids)] == r.prompt_ids and ids[len(r.prompt_ids):-1] == r.reference_ids
        assert r.reference == r.row["output"]


def test_scores_equal_the_libraries_and_a_hand_table():
    import sacrebleu
    from rouge_score import rouge_scorer

    from ft.evaluate.metrics import METRICS, exact_match, token_f1

    # SQuAD normalisation: case, punctuation and articles do not count
    table = [("The Eiffel Tower!", "eiffel tower", 1.0, 1.0), ("in Paris, France", "Paris", 0.0, 0.5),
             ("an apple", "the apple.", 1.0, 1.0), ("Lima", "Cairo", 0.0, 0.0), ("a b c", "c b a", 0.0, 1.0)]
    for prediction, reference, em, f1 in table:
        assert exact_match(prediction, reference) == em and token_f1(prediction, reference) == pytest.approx(f1)
    predictions = ["the cat sat on the mat", "a dog ran fast", "hello world"]
    references = ["the cat sat on a mat", "the dog runs fast", "hello there world"]
    assert METRICS.get("bleu").corpus(predictions, references)["bleu"] == sacrebleu.corpus_bleu(predictions, [references]).score
    assert METRICS.get("chrf").corpus(predictions, references)["chrf"] == sacrebleu.corpus_chrf(predictions, [references]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    own = [scorer.score(r, p) for p, r in zip(predictions, references)]
    got = METRICS.get("rouge").corpus(predictions, references)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(100 * sum(o[key].fmeasure for o in own) / len(own))
    # non-ASCII words count (rouge-score's own tokenizer drops them)
    assert METRICS.get("rouge").corpus(["überall grün"], ["überall grün"])["rouge1"] == 100.0


@pytest.mark.slow
def test_a_killed_eval_resumes_to_a_byte_identical_predictions_file(tmp_path: Path, tiny_model_dir):
    model = tiny_model_dir("llama")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for folder in (whole, cut):
        folder.mkdir()
        _config(folder, model, "eval_batch_size: 2\n", new_tokens=48)
    assert run_ft("eval", "cfg.yml", "--data", ALPACA, "--base-only", cwd=whole).returncode == 0
    want = (whole / "out/eval-base/predictions.jsonl").read_bytes()
    proc = ftproc.FtProcess(["eval", "cfg.yml", "--data", str(ALPACA), "--base-only"], cut, {**os.environ, "OMP_NUM_THREADS": "1"})
    path = cut / "out/eval-base/predictions.jsonl"
    deadline = time.monotonic() + 120
    while (not path.is_file() or path.read_bytes().count(b"\n") < 2) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    proc.output()
    assert path.read_bytes().count(b"\n") < want.count(b"\n")
    with open(path, "ab") as f:
        f.write(b'{"id": 999, "predic')  # a line cut off mid-write
    assert run_ft("eval", "cfg.yml", "--data", ALPACA, "--base-only", cwd=cut).returncode == 0
    assert path.read_bytes() == want
    assert json.loads((cut / "out/eval-base/eval_results.json").read_text()) == json.loads((whole / "out/eval-base/eval_results.json").read_text())


def test_a_metric_of_ones_own(tmp_path: Path, tiny_model_dir):
    (tmp_path / "mine.py").write_text("def length_ratio(prediction, reference, row):\n    return {'ratio': len(prediction) / max(len(reference), 1)}\n")
    _config(tmp_path, tiny_model_dir("llama"), f"eval_metric_function: {tmp_path / 'mine.py'}:length_ratio\n")
    result = run_ft("eval", "cfg.yml", "--data", ALPACA, "--base-only", "--limit", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "out/eval-base/eval_results.json").read_text())
    assert results["rows"] == 4 and "user_ratio" in results and "exact_match" in results and results["perplexity"] > 1


@pytest.mark.parametrize("extra, args, words", [
    ("", ("--data", "refless.jsonl"), ("row 0", "missing column `output`")),
    ("eval_causal_lm_metrics: [bleu, blue]\n", (), ("`blue`", "did you mean `bleu`")),
    ("eval_causal_lm_metrics: [comet]\n", (), ("`comet` is not supported yet",)),
    ("eval_metric_function: nowhere.py:score\n", ("--data", str(ALPACA)), ("nowhere.py is not a file",)),
    ("eval_metric_function: mine.py:boom\n", ("--data", str(ALPACA)), ("raised on row", "ZeroDivisionError")),
    ("do_causal_lm_eval: true\n", (), ("`do_causal_lm_eval` needs evaluation data",)),
    ("expert_parallel_size: 2\n", (), ("Axolotl's `expert_parallel_size` (expert parallelism) is not supported by ft yet",)),
], ids=["no reference column", "unknown metric", "comet", "no metric file", "a metric that raises",
        "generation metrics without eval data", "a peer's key ft lacks"])
def test_bad_evaluation_input_is_one_sentence(extra, args, words, tmp_path: Path, tiny_model_dir):
    (tmp_path / "refless.jsonl").write_text(json.dumps({"instruction": "Say hi."}) + "\n")
    (tmp_path / "mine.py").write_text("def boom(prediction, reference, row):\n    return 1 / 0\n")
    _config(tmp_path, tiny_model_dir("llama"), extra)
    result = run_ft("eval", "cfg.yml", "--base-only", *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]


def test_generation_metrics_during_training_keep_the_best_checkpoint(tmp_path: Path, tiny_model_dir):
    """do_causal_lm_eval with packing: every evaluation logs eval_chrf and eval_f1 to metrics.jsonl; with
    metric_for_best_model: chrf, greater_is_better: false (so that the best is an early checkpoint: chrF rises as
    the model learns) and load_best_model_at_end, the run ends with the checkpoint whose chrF was best, which
    save_total_limit: 1 would have rotated away."""
    from safetensors.torch import load_file

    _config(tmp_path, tiny_model_dir("llama"),
            "val_set_size: 8\nadapter: lora\nlora_target_linear: true\nsample_packing: true\nsequence_len: 256\n"
            "max_steps: 8\neval_steps: 2\nlearning_rate: 0.01\nsave_total_limit: 1\ndo_causal_lm_eval: true\n"
            "eval_causal_lm_metrics: [chrf, f1]\neval_generation_rows: 8\nmetric_for_best_model: chrf\nload_best_model_at_end: true\n"
            "greater_is_better: false\n")
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [r for r in map(json.loads, (tmp_path / "out/metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert len(evals) >= 4 and all("eval_chrf" in r and "eval_f1" in r for r in evals), evals
    best = min(evals, key=lambda r: (r["eval_chrf"], r["step"]))  # the first of equals stays best
    assert best["step"] < max(r["step"] for r in evals)  # an early one: rotation had to spare it
    state = json.loads(next((tmp_path / "out").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}"), (state["best_model_checkpoint"], evals)
    kept = tmp_path / "out" / f"checkpoint-{best['step']}"
    assert kept.is_dir()
    final = load_file(str(tmp_path / "out/adapter_model.safetensors"))
    saved = load_file(str(kept / "adapter_model.safetensors"))
    assert final.keys() == saved.keys() and all((final[k] == saved[k]).all() for k in final)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_generation_metrics_on_two_processes(backend, tmp_path: Path, tiny_model_dir):
    """Under DDP and ZeRO-2 every process answers the same rows (no collective) and the metric is logged; under
    ZeRO-3 the weights are whole only inside the forward pass: refused in one sentence."""
    from conftest import ROOT

    deepspeed = f"deepspeed: {ROOT / 'deepspeed_configs' / (backend + '.json')}\n" if backend.startswith("zero") else ""
    _config(tmp_path, tiny_model_dir("llama"), "val_set_size: 8\nadapter: lora\nlora_target_linear: true\nmax_steps: 4\n"
            "eval_steps: 2\nmicro_batch_size: 2\ndo_causal_lm_eval: true\neval_causal_lm_metrics: [chrf]\n"
            "eval_generation_rows: 4\n" + deepspeed)
    result = run_ft("train", "cfg.yml", "--num-processes", "2", cwd=tmp_path)
    if backend == "zero3":
        assert result.returncode == 2, result.stderr[-3000:]
        assert "`do_causal_lm_eval` is not supported with DeepSpeed ZeRO-3" in result.stderr.strip().splitlines()[-1]
        return
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [r for r in map(json.loads, (tmp_path / "out/metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert len(evals) >= 2 and all("eval_chrf" in r for r in evals), evals
