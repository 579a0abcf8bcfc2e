#!/usr/bin/env python
"""Multiple-choice scoring speed: ft eval's scorer beside lm-evaluation-harness's HF backend, on the same local
task, the same model object and the same batch size, in one run; and their accuracies, which must agree.

    python scripts/bench_mc.py [--rows 400] [--batch 16] [--hidden 256] [--layers 4] [--repeats 3]

The task: reverse-the-words questions with four choices of 1-5 words after a ~60-token instruction (the
quickstart's kind), rendered as plain completion prompts so both score the same tokens. A random-weight Llama of
the given shape (bf16 on a GPU, fp32 on CPU). Rows per second exclude loading the model and lm-eval's task
index; the best of --repeats runs each. ft: choice_rows + score_batch (the prompts' forward shared across
choices); ft-whole: the same rows with every prompt + choice forwarded whole (the sharing switched off).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = "cat dog sun moon tree river stone bird fish cloud rain snow wind fire leaf".split()
PREAMBLE = ("Here is a list of words. Read them carefully, keep every word exactly as it is written, and say them "
            "again in the opposite order, the last one first, separated by single spaces. The words:")


def rows(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(2, 5))
        right = " " + " ".join(reversed(words))
        choices = [right] + [" " + " ".join(rng.sample(WORDS, rng.randint(1, 5))) for _ in range(3)]
        rng.shuffle(choices)
        out.append({"question": f"{PREAMBLE} {' '.join(words)}. Reversed:", "choices": choices, "answer": choices.index(right)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from ft.config.data import DataConfig, DatasetConfig
    from ft.evaluate import choices as mc
    from ft.tiny import make_tiny_model
    from ft.tokenizer.load import load_tokenizer
    from ft.config.model import ModelConfig

    work = Path(tempfile.mkdtemp(prefix="ft-bench-mc-"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = make_tiny_model(work / "model", hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                           num_hidden_layers=args.layers, num_attention_heads=max(args.hidden // 64, 2), num_key_value_heads=2)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if device == "cuda" else torch.float32).to(device).eval()
    tokenizer = load_tokenizer(ModelConfig(base_model=str(path)))
    data = rows(args.rows)
    ds = DatasetConfig(path=str(work / "mc.jsonl"), type="completion")
    config = DataConfig(datasets=[ds], sequence_len=512)
    pad = tokenizer.pad_token_id

    def ft(shared: bool) -> tuple[float, list[list[float]]]:
        start = time.perf_counter()
        prepared, _ = mc.choice_rows(data, ds, config, tokenizer)
        scores = {}
        for batch in mc.fixed_batches(prepared, args.batch):
            with torch.no_grad():
                lls = (mc._shared if shared else mc._whole)(model, batch, pad)
            scores.update({r.id: ll for r, ll in zip(batch, lls)})
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return seconds, [scores[i] for i in range(len(data))]

    task_dir = work / "tasks"
    task_dir.mkdir()
    (task_dir / "rows.jsonl").write_text("".join(json.dumps({"prompt": r["question"], "choices": r["choices"], "answer": r["answer"]}) + "\n" for r in data))
    (task_dir / "bench.yaml").write_text(f"task: ft_bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {task_dir / 'rows.jsonl'}\n"
                                         "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{prompt}}'\n"
                                         "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\ntarget_delimiter: ''\n"
                                         "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch, add_bos_token=True)

    def theirs() -> tuple[float, dict]:
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=harness, tasks=["ft_bench_mc"], task_manager=manager, log_samples=False,
                                      bootstrap_iters=0, verbosity="ERROR")
        return time.perf_counter() - start, out["results"]["ft_bench_mc"]

    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in (("ft", lambda: ft(True)), ("ft-whole", lambda: ft(False)), ("lm-eval HF", theirs)):
            seconds, result = run()
            best[name] = min(best.get(name, float("inf")), seconds)
            if name == "ft":
                ours = result
            elif name == "lm-eval HF":
                harness_result = result
    acc = sum(max(range(4), key=lambda k: (ll[k], -k)) == r["answer"] for ll, r in zip(ours, data)) / len(data)
    acc_norm = sum(max(range(4), key=lambda k: (ll[k] / len(r["choices"][k]), -k)) == r["answer"] for ll, r in zip(ours, data)) / len(data)
    print(f"{args.rows} rows × 4 choices, batch {args.batch}, Llama {args.layers} layers × {args.hidden} on {device}, "
          f"torch {torch.__version__}, lm_eval {lm_eval.__version__}")
    print(f"{'contender':<14}{'seconds':>9}{'rows/s':>9}{'× lm-eval':>11}")
    for name, seconds in best.items():
        print(f"{name:<14}{seconds:>9.2f}{args.rows / seconds:>9.1f}{best['lm-eval HF'] / seconds:>11.2f}")
    print(f"accuracy: ft acc {acc:.4f} acc_norm {acc_norm:.4f}; lm-eval acc {harness_result['acc,none']:.4f} "
          f"acc_norm {harness_result['acc_norm,none']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"rows": args.rows, "seconds": best, "device": device,
                                        "acc": {"ft": acc, "lm-eval": harness_result["acc,none"]}}, indent=1))
    if abs(acc - harness_result["acc,none"]) > 1e-9:
        sys.exit("the two disagree on acc")


if __name__ == "__main__":
    main()
