#!/usr/bin/env python
"""ft's distillation beside TRL's GKDTrainer on the same teacher, student, rows, LoRA and batch: real tokens per
second and peak memory, each in a process of its own.

    python scripts/bench_distill.py [--rows 256] [--batch 8] [--steps 16] [--hidden 256] [--layers 4]

TRL is installed for this benchmark only, never for ft: `pip install --target /tmp/trl-site --no-deps trl`
(the TRL contender runs with /tmp/trl-site on its path, or TRL_SITE). The setting is GKD's nearest to
supervised distillation: lmbda 0 (no on-policy generations), beta 0 (forward KL(teacher‖student)), temperature
1, no cross-entropy term (ft: kd_alpha 1, kd_ce_alpha 0), over the whole vocabulary, loss on the answers only.
Teacher: a tiny random Llama twice as wide and deep as the student (ft.tiny, --hidden, --layers), frozen, in
the training dtype; student: LoRA r=16 on every linear layer, AdamW at lr 1e-4, micro batch --batch rows of
conversations (a prompt of 16 to 240 words, an answer of 8 to 120), --steps steps after two warm-up steps. Real
tokens: the non-padding tokens of each batch as the step receives it. Peak memory: the GPU's peak allocated
memory on a GPU, the process's peak resident memory on CPU. Target: ft ≥ 1.5× TRL's real tokens per second at
no more memory.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

from bench_preference import WORDS, Meter, compare, contender_arguments, ft_figures

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def words(a: int, b: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(a, b)))

    return [{"messages": [{"role": "user", "content": "Continue: " + words(16, 240)},
                          {"role": "assistant", "content": words(8, 120)}]} for _ in range(n)]


def run_ft(work: Path, args) -> dict:
    # padding_free: the same rows per micro batch as TRL's, laid end to end (ft's default on a GPU)
    return ft_figures(work, f"base_model: {work / 'student'}\nteacher_model: {work / 'teacher'}\nkd_alpha: 1.0\n"
                      f"kd_temperature: 1.0\ndatasets:\n  - path: {work / 'rows.jsonl'}\n    type: chat_template\n"
                      f"adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n", args, "0.0001",
                      "padding_free: true\n")


def run_trl(work: Path, args) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(work / "student")
    student = AutoModelForCausalLM.from_pretrained(work / "student", dtype=dtype)
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=dtype)
    data = load_dataset("json", data_files=str(work / "rows.jsonl"), split="train")
    config = GKDConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=args.batch, max_steps=args.steps + 2,
                       learning_rate=1e-4, lr_scheduler_type="constant", lmbda=0.0, beta=0.0, temperature=1.0,
                       seq_kd=False, logging_steps=1, save_strategy="no", report_to=[], max_length=1024,
                       bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available())
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora)
    meter = Meter(trainer, 2)
    trainer.train()
    return meter.figures()


def main() -> None:
    args = contender_arguments(__doc__, "rows", 256, 16)
    if args.run:
        figures = (run_ft if args.run == "ft" else run_trl)(Path(args.work), args)
        print("RESULT " + json.dumps(figures))
        return

    from ft.tiny import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ft-bench-distill-"))
    shape = dict(num_attention_heads=4, num_key_value_heads=2)
    make_tiny_model(work / "student", "llama", hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                    num_hidden_layers=args.layers, **shape)
    make_tiny_model(work / "teacher", "llama", weights_seed=7, hidden_size=2 * args.hidden, intermediate_size=8 * args.hidden,
                    num_hidden_layers=2 * args.layers, **shape)
    (work / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in conversations(args.rows)))
    compare(__file__, work, args)


if __name__ == "__main__":
    main()
