"""`ft eval`: score the base model, the base plus the run's adapter (default) or the merged model on a test
set, by the answers it generates: output_dir/eval-<model>/predictions.jsonl (written row by row; a killed run
resumes) and eval_results.json, and a short table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from ft.config import FtConfig
from ft.errors import ConfigError, DataError


def test_rows(cfg: FtConfig, data_file: Optional[str]) -> tuple[Any, list[dict[str, Any]]]:
    """(the dataset entry whose format builds the prompts, its rows): --data FILE in the first dataset's format,
    else the first of test_datasets."""
    from ft.data.sources import load_rows

    if data_file:
        ds = cfg.data.datasets[0].model_copy(update={"path": data_file, "data_files": None, "split": "train"})
    elif cfg.data.test_datasets:
        ds = cfg.data.test_datasets[0]
    else:
        raise ConfigError("`ft eval` needs test rows: pass --data FILE (in the first dataset's format) or set test_datasets")
    rows = load_rows(ds)
    if not rows:
        raise DataError(f"the test set `{ds.path}` has no rows")
    return ds, rows


def load_model(cfg: FtConfig, which: str) -> tuple[Any, Any]:
    from ft.commands.inference import load_for_inference

    if which != "merged":
        return load_for_inference(cfg, base_only=which == "base")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft.model.precision import device, resolve_dtype

    merged = Path(cfg.training.output_dir) / "merged"
    if not (merged / "config.json").is_file():
        raise ConfigError(f"no merged model in {merged}; run `ft merge-lora` first")
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=resolve_dtype(cfg.model)).to(device()).eval()
    return model, AutoTokenizer.from_pretrained(merged)


def eval_folder(cfg: FtConfig, name: str) -> Path:
    """output_dir/eval-<name>, made if missing: where one model's evaluation writes."""
    folder = Path(cfg.training.output_dir) / f"eval-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def eval_batch(cfg: FtConfig) -> int:
    return cfg.training.eval_batch_size or max(cfg.training.micro_batch_size, 8)


def run_eval(cfg: FtConfig, data_file: Optional[str], limit: Optional[int], which: str) -> dict[str, Any]:
    from ft.launch.backend import keep_caches_in

    keep_caches_in(cfg.training.output_dir)
    from ft.evaluate.metrics import corpus_scores, row_scores
    from ft.evaluate.predict import (append_lines, batches, done_ids, eval_rows, generate_batch, perplexity,
                                     reference_loss, user_metric)
    from ft.files import atomic_write_text

    e = cfg.evaluation
    metric_fn = user_metric(e.eval_metric_function)
    ds, raw = test_rows(cfg, data_file)
    model, tokenizer = load_model(cfg, which)
    from ft.evaluate.choices import is_multiple_choice

    if is_multiple_choice(raw[0]):
        return run_choices(cfg, ds, raw[:limit] if limit else raw, model, tokenizer, which)
    rows, skipped = eval_rows(raw[:limit] if limit else raw, ds, cfg.data, tokenizer)
    if not rows:
        raise DataError(f"no row of `{ds.path}` has a prompt and an answer within sequence_len {cfg.data.sequence_len}")
    folder = eval_folder(cfg, which)
    path = folder / "predictions.jsonl"
    done = done_ids(path)
    started, generated = time.perf_counter(), 0
    size = eval_batch(cfg)
    pending = [r for r in rows if r.id not in done]
    from ft.progress import Progress

    progress = Progress(len(pending), "ft eval: rows answered")
    for batch in batches(pending, size):
        answers = generate_batch(model, tokenizer, batch, e)
        losses = reference_loss(model, batch)
        records = []
        for r, answer, (loss, n) in zip(batch, answers, losses):
            scores: dict[str, float] = {}
            for name in e.eval_causal_lm_metrics:
                scores.update(row_scores(name, answer, r.reference, e))
            if metric_fn is not None:
                scores.update(_user_scores(metric_fn, answer, r))
            records.append({"id": r.id, "prompt": tokenizer.decode(r.prompt_ids), "prediction": answer,
                            "reference": r.reference, "loss": loss, "tokens": n, "scores": scores})
        append_lines(path, records)
        generated += len(batch)
        progress.advance(len(batch))
    progress.close()
    seconds = time.perf_counter() - started
    written = sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()), key=lambda x: x["id"])
    predictions, references = [w["prediction"] for w in written], [w["reference"] for w in written]
    results: dict[str, Any] = {"model": which, "rows": len(written), "skipped": skipped}
    for name in e.eval_causal_lm_metrics:
        results.update({k: round(v, 4) for k, v in corpus_scores(name, predictions, references, e).items()})
    if metric_fn is not None:
        keys = sorted({k for w in written for k in w["scores"] if k.startswith("user")})
        results.update({k: round(sum(w["scores"].get(k, 0.0) for w in written) / len(written), 4) for k in keys})
    loss_sum, tokens = sum(w["loss"] for w in written), sum(w["tokens"] for w in written)
    results["loss"] = round(loss_sum / max(tokens, 1), 4)
    results["perplexity"] = round(perplexity(loss_sum, tokens), 4)
    atomic_write_text(folder / "eval_results.json", json.dumps(results, indent=1))
    print(f"ft eval ({which}): {len(written)} rows ({skipped} left out), {generated} generated now"
          + (f" at {generated / seconds:.1f} rows/s" if generated else "") + f" → {folder}")
    for key, value in results.items():
        if isinstance(value, float):
            print(f"  {key:<14} {value:>10.4f}")
    return results


def run_choices(cfg: FtConfig, ds: Any, raw: list[dict[str, Any]], model: Any, tokenizer: Any, which: str) -> dict[str, Any]:
    """Multiple choice (ft.evaluate.choices): every choice's log-likelihood, acc and acc_norm; predictions.jsonl
    written a batch at a time over fixed batches, so a killed run resumes to the same bytes."""
    from ft.evaluate.choices import choice_rows, corpus, fixed_batches, record, score_batch
    from ft.evaluate.predict import append_lines, done_ids
    from ft.files import atomic_write_text
    from ft.progress import Progress

    rows, skipped = choice_rows(raw, ds, cfg.data, tokenizer)
    if not rows:
        raise DataError(f"no row of `{ds.path}` has its prompt and choices within sequence_len {cfg.data.sequence_len}")
    folder = eval_folder(cfg, f"{which}-choices")  # beside the generated answers' eval-<which>
    path = folder / "predictions.jsonl"
    done = done_ids(path)
    size = eval_batch(cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    todo = [b for b in fixed_batches(rows, size) if any(r.id not in done for r in b)]
    progress = Progress(sum(len(b) for b in todo), "ft eval: rows scored")
    started, scored = time.perf_counter(), 0
    for batch in todo:
        lls = score_batch(model, batch, pad)
        append_lines(path, [record(r, ll) for r, ll in zip(batch, lls) if r.id not in done])
        scored += len(batch)
        progress.advance(len(batch))
    progress.close()
    seconds = time.perf_counter() - started
    written = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    results: dict[str, Any] = {"model": which, "rows": len(written), "skipped": skipped, "kind": "multiple choice"}
    results.update({k: round(v, 4) for k, v in corpus(written).items()})
    atomic_write_text(folder / "eval_results.json", json.dumps(results, indent=1))
    print(f"ft eval ({which}): {len(written)} multiple-choice rows ({skipped} left out), {scored} scored now"
          + (f" at {scored / seconds:.1f} rows/s" if scored else "") + f" → {folder}")
    for key in ("acc", "acc_norm"):
        print(f"  {key:<14} {results[key]:>10.4f}")
    return results


def _user_scores(fn: Any, answer: str, r: Any) -> dict[str, float]:
    try:
        value = fn(answer, r.reference, r.row)
    except Exception as exc:  # the user's code: name the row and what it raised
        raise DataError(f"`eval_metric_function` raised on row {r.id}: {type(exc).__name__}: {exc}") from None
    if isinstance(value, dict):
        return {f"user_{k}": float(v) for k, v in value.items()}
    return {"user_metric": float(value)}


def run_harness(cfg: FtConfig, tasks: tuple[str, ...], limit: Optional[int], which: str) -> dict[str, Any]:
    """lm-evaluation-harness tasks on the model ft loads (the adapter on its base, not the bare base): results in
    output_dir/eval-<which>/lm_eval_results.json and a short table."""
    from ft.evaluate.harness import check_tasks, run_tasks, task_manager
    from ft.launch.backend import keep_caches_in

    keep_caches_in(cfg.training.output_dir)
    if not tasks:
        raise ConfigError("no lm-eval task: pass --tasks NAMES or set lm_eval_tasks")
    e = cfg.evaluation
    check_tasks(task_manager(e.lm_eval_include_path, tasks), tasks)  # before the model loads: a missing dataset says so at once
    model, tokenizer = load_model(cfg, which)
    return write_harness(cfg, run_tasks(model, tokenizer, tasks, e.lm_eval_batch_size, e.lm_eval_include_path, limit), which)


def write_harness(cfg: FtConfig, results: dict[str, Any], which: str) -> dict[str, Any]:
    from ft.files import atomic_write_text

    folder = eval_folder(cfg, which)
    atomic_write_text(folder / "lm_eval_results.json", json.dumps({"model": which, "results": results}, indent=1))
    print(f"ft eval ({which}): lm-eval → {folder / 'lm_eval_results.json'}")
    for task, metrics in results.items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not key.endswith("stderr") and key != "sample_len":
                print(f"  {task:<24} {key:<14} {value:>10.4f}")
    return results


def run_compare(cfg: FtConfig, a: str, b: str, judge: Optional[str]) -> dict[str, Any]:
    """Two runs' predictions side by side: output_dir/compare/compare.json, compare.png and a table."""
    from ft.evaluate.compare import compare, plot, predictions_file, table
    from ft.files import atomic_write_text

    result = compare(predictions_file(a), predictions_file(b), judge)
    folder = Path(cfg.training.output_dir) / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "compare.json", json.dumps(result, indent=1))
    plot(result, folder / "compare.png")
    print(table(result))
    print(f"→ {folder}")
    return result
