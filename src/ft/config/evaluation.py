"""`evaluation` section: how `ft eval` generates answers and what it scores them with."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, ValidationInfo, field_validator

from ft.config.base import Section
from ft.config.context import canonical

NOT_YET = {"comet": "COMET needs a model of its own", "ter": "TER is not there yet"}


class EvaluationConfig(Section):
    do_causal_lm_eval: bool = Field(
        False, description="At every evaluation during training, also generate answers for eval_generation_rows "
        "held-out rows and score them with eval_causal_lm_metrics (logged as eval_<metric>).",
    )
    eval_generation_rows: int = Field(32, ge=1, description="Held-out rows answered at each evaluation during training.")
    eval_causal_lm_metrics: tuple[str, ...] = Field(
        ("exact_match", "f1", "bleu", "chrf", "rouge"),
        description="Metrics of `ft eval` on the generated answers: exact_match, f1 (SQuAD-style), bleu, chrf "
        "(sacrebleu), rouge (ROUGE-1/2/L), bertscore (with bertscore_model); the references' loss and perplexity are "
        "always computed. A test set of multiple-choice rows is scored by acc and acc_norm instead.",
    )
    eval_max_new_tokens: int = Field(128, ge=1, description="Most tokens generated per answer.")
    eval_do_sample: bool = Field(False, description="Sample instead of greedy decoding (with eval_temperature, top_p, top_k).")
    eval_temperature: float = Field(1.0, gt=0, description="Sampling temperature (with eval_do_sample).")
    eval_top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (with eval_do_sample).")
    eval_top_k: Optional[int] = Field(None, ge=1, description="Sample among the k likeliest tokens (with eval_do_sample).")
    eval_num_beams: int = Field(1, ge=1, description="Beam search width (1: no beam search).")
    eval_generation_seed: int = Field(42, description="Seed for sampled generation, so a run can be repeated.")
    eval_metric_function: Optional[str] = Field(
        None, description="A metric of your own: `file.py:function` or `module:function`, called as "
        "function(prediction, reference, row) → a number or {name: number} per row (averaged over rows).",
    )

    bertscore_model: Optional[str] = Field(
        None, description="The metric `bertscore`: a local encoder model folder (e.g. a downloaded roberta-large) whose "
        "contextual embeddings BERTScore matches (bert-score, `pip install 'ft[bench]'`).")
    bertscore_num_layers: Optional[int] = Field(
        None, ge=1, description="The metric `bertscore`: which layer's embeddings (default: the model's last).")
    lm_eval_tasks: tuple[str, ...] = Field(
        (), description="lm-evaluation-harness tasks (`ft eval --tasks` and, with lm_eval_post_train, after `ft train`) "
        "scored on the model in memory: the base, the run's adapter or the merged model (`pip install 'ft[bench]'`).")
    lm_eval_batch_size: int = Field(8, ge=1, description="lm-eval's batch size.")
    lm_eval_post_train: bool = Field(
        True, description="Run lm_eval_tasks on the trained model when `ft train` ends (one process; results in "
        "output_dir/eval-adapter/lm_eval_results.json, or eval-full for a full fine-tune).")
    lm_eval_include_path: Optional[str] = Field(
        None, description="A folder of local lm-eval task files (YAML; `dataset_path: json` with `data_files` reads "
        "local rows), searched before lm-eval's own tasks.")

    @field_validator("lm_eval_tasks", mode="before")
    @classmethod
    def _tasks_list(cls, v: object) -> object:
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v

    @field_validator("eval_causal_lm_metrics", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("eval_causal_lm_metrics")
    @classmethod
    def _registered(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for name in v:
            if name in NOT_YET:
                raise ValueError(f"the metric `{name}` is not supported yet ({NOT_YET[name]})")
        return tuple(canonical(info, "metrics", name) for name in v)
