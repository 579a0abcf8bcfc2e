#!/usr/bin/env python
"""Does distillation teach? The quickstart's task (reverse a list of words), on this machine's CPU.

    python scripts/distill_learns.py [--work DIR] [--student-epochs N]

1. A teacher (a tiny Llama, 4 layers of width 128) is fully fine-tuned on the quickstart's rows.
2. A smaller student (2 layers of width 64, random weights, the same tokenizer) is trained twice for the same
   steps: on cross-entropy alone, and distilled from the teacher (kd_alpha 0.5, T 2, forward KL).
3. On the held-out rows (examples/quickstart/test.jsonl) all three answer greedily; printed: how often each
   student's answer is the teacher's, token for token, and how often each is the reference answer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml
from _ft_runs import greedy_answers
from _ft_runs import train as run_train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples/quickstart"


def train(folder: Path, body: dict) -> None:
    if (folder / "out/summary.json").is_file() and (folder / "cfg.yml").read_text() == yaml.safe_dump(body, sort_keys=False):
        print(f"{folder.name}: trained already in {folder}")  # --work given again: the same run is not repeated
        return
    print(run_train(folder, body).strip().splitlines()[-1])


def answers(model_dir: Path, rows: list[dict]) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return greedy_answers(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--teacher-epochs", type=float, default=12)
    parser.add_argument("--student-epochs", type=float, default=10)
    parser.add_argument("--kd-alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ft-distill-"))
    from ft.tiny import make_tiny_model

    common = {"datasets": [{"path": str(QUICK / "train.jsonl"), "type": "alpaca"}], "sequence_len": 128,
              "micro_batch_size": 16, "learning_rate": 0.002, "lr_scheduler": "cosine", "warmup_steps": 20,
              "logging_steps": 50, "sample_packing": True, "use_tensorboard": False, "seed": 1}
    teacher_init = make_tiny_model(work / "teacher-init", hidden_size=128, intermediate_size=256, num_hidden_layers=4)
    student_init = make_tiny_model(work / "student-init", weights_seed=5)
    print(f"teacher: {teacher_init} (4 layers × 128); student: {student_init} (2 layers × 64); work: {work}")
    train(work / "teacher", {**common, "base_model": str(teacher_init), "num_epochs": args.teacher_epochs,
                             "output_dir": str(work / "teacher/out")})
    teacher = work / "teacher/out"
    student = {**common, "base_model": str(student_init), "num_epochs": args.student_epochs}
    train(work / "ce", {**student, "output_dir": str(work / "ce/out")})
    kd = f"kd-a{args.kd_alpha:g}-t{args.temperature:g}"
    train(work / kd, {**student, "output_dir": str(work / kd / "out"), "teacher_model": str(teacher),
                      "kd_alpha": args.kd_alpha, "kd_temperature": args.temperature})
    rows = [json.loads(line) for line in (QUICK / "test.jsonl").read_text().splitlines()]
    said = {name: answers(folder, rows) for name, folder in
            (("teacher", teacher), ("ce", work / "ce/out"), ("kd", work / kd / "out"))}
    reference = [r["output"].strip() for r in rows]

    def share(a: list[str], b: list[str]) -> float:
        return 100 * sum(x == y for x, y in zip(a, b)) / len(a)

    def words_same(a: list[str], b: list[str]) -> float:  # the share of the teacher's words said in the same place
        return 100 * sum(sum(x == y for x, y in zip(p.split(), q.split())) for p, q in zip(a, b)) / max(
            sum(len(q.split()) for q in b), 1)

    print(f"held-out rows: {len(rows)}; student steps as many for both ({args.student_epochs:g} epochs)")
    print(f"  teacher's answers that are the reference: {share(said['teacher'], reference):5.1f}%")
    for name, words in (("ce", "student, cross-entropy alone"),
                        ("kd", f"student, distilled (α {args.kd_alpha:g}, T {args.temperature:g})")):
        print(f"  {words:<30} agrees with the teacher {share(said[name], said['teacher']):5.1f}% of answers, "
              f"{words_same(said[name], said['teacher']):5.1f}% of its words; is the reference "
              f"{share(said[name], reference):5.1f}%")


if __name__ == "__main__":
    main()
