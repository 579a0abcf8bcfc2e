"""Test rows → prompts as training built them → answers generated in batches → predictions.jsonl, row by row.

A row's prompt is its tokens before the first trained token, exactly as training tokenized it (the format's
segments, special tokens and all: no decoded text is tokenized again); its reference is the trained tokens
(the output), decoded. Generation runs in batches with left padding, greedy unless the config samples; a
batch gives token for token what each row alone gives (tests/test_eval.py). Each finished row is appended to
predictions.jsonl and flushed, so a killed `ft eval` starts again after the last whole line and ends with the
same file.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ft.config.data import DataConfig, DatasetConfig
from ft.config.evaluation import EvaluationConfig
from ft.data.labels import IGNORE
from ft.errors import DataError


@dataclass(frozen=True)
class EvalRow:
    id: int
    prompt_ids: list[int]
    reference_ids: list[int]
    reference: str
    row: dict[str, Any]


def eval_rows(rows: list[dict[str, Any]], ds: DatasetConfig, data: DataConfig, tokenizer: Any) -> tuple[list[EvalRow], int]:
    """The rows as prompts and references, and how many were left out (longer than sequence_len, or with
    nothing to answer)."""
    from ft.data.tokenize import RowTokenizer
    from ft.tokenizer.load import adds_bos

    tokenize = RowTokenizer(ds, data.model_copy(update={"train_on_inputs": False}), tokenizer, adds_bos(tokenizer))
    out, skipped = [], 0
    eos = tokenizer.eos_token_id
    for i, row in enumerate(rows):
        t = tokenize([row], first_index=i)
        if not t.input_ids:
            skipped += 1
            continue
        ids, labels = t.input_ids[0], t.labels[0]
        first = next((j for j, label in enumerate(labels) if label != IGNORE), None)
        if first is None or first == 0:
            skipped += 1
            continue
        answer = [tok for tok, label in zip(ids, labels) if label != IGNORE]
        if answer and answer[-1] == eos:
            answer = answer[:-1]
        out.append(EvalRow(i, ids[:first], answer, tokenizer.decode(answer, skip_special_tokens=True).strip(), row))
    return out, skipped


def generate_batch(model: Any, tokenizer: Any, rows: list[EvalRow], e: EvaluationConfig) -> list[str]:
    """Answers for a batch of prompts, left-padded, with the configured decoding."""
    import torch

    width = max(len(r.prompt_ids) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids):] = 1
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": e.eval_temperature, "top_p": e.eval_top_p, "top_k": e.eval_top_k} \
        if e.eval_do_sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if e.eval_do_sample:
        torch.manual_seed(e.eval_generation_seed + rows[0].id)  # a batch's draws depend on its first row, not on the run
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=e.eval_max_new_tokens,
                             num_beams=e.eval_num_beams, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **sampling)
    return [tokenizer.decode(o[width:], skip_special_tokens=True).strip() for o in out]


def reference_loss(model: Any, rows: list[EvalRow]) -> list[tuple[float, int]]:
    """(summed loss, tokens) of each reference given its prompt, teacher-forced: the perplexity's parts."""
    import torch

    device = next(model.parameters()).device
    result = []
    with torch.no_grad():
        for r in rows:
            if not r.reference_ids:
                result.append((0.0, 0))
                continue
            ids = torch.tensor([r.prompt_ids + r.reference_ids], device=device)
            logits = model(input_ids=ids).logits[0, -ids.shape[1]:]  # after a prompt-learning method's virtual tokens
            logits = logits[len(r.prompt_ids) - 1 : -1].float()
            target = torch.tensor(r.reference_ids, device=device)
            result.append((float(torch.nn.functional.cross_entropy(logits, target, reduction="sum")), len(r.reference_ids)))
    return result


def done_ids(path: Path) -> set[int]:
    """Ids of the whole lines already in predictions.jsonl; a line cut off by a kill is removed."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        path.write_bytes(keep)
    return {json.loads(line)["id"] for line in keep.splitlines() if line.strip()}


def append_lines(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def batches(rows: list[EvalRow], size: int) -> Iterator[list[EvalRow]]:
    """Rows grouped by prompt length (less padding), in a fixed order: a resumed run makes the same batches."""
    ordered = sorted(rows, key=lambda r: (len(r.prompt_ids), r.id))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def user_metric(spec: Optional[str]) -> Any:
    """The function `file.py:name` or `module:name` names, or None."""
    if not spec:
        return None
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise DataError(f"`eval_metric_function: {spec}`: write `file.py:function` or `module:function`")
    import importlib
    import importlib.util

    try:
        if where.endswith(".py"):
            loader = importlib.util.spec_from_file_location("ft_user_metric", where)
            if loader is None or not Path(where).is_file():
                raise DataError(f"`eval_metric_function`: {where} is not a file")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        raise DataError(f"`eval_metric_function`: cannot import {where}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise DataError(f"`eval_metric_function`: {where} has no function `{name}`")
    return fn


def perplexity(loss_sum: float, tokens: int) -> float:
    return math.exp(min(loss_sum / tokens, 50)) if tokens else float("nan")


def rows_from_tokenized(input_ids: list[list[int]], labels: list[list[int]], tokenizer: Any, cap: int) -> list[EvalRow]:
    """Held-out rows prepared for training (input_ids, labels) as prompts and references, the first `cap`
    that have both (for the generation metrics of evaluations during training)."""
    out: list[EvalRow] = []
    for i, (ids, row_labels) in enumerate(zip(input_ids, labels)):
        first = next((j for j, label in enumerate(row_labels) if label != IGNORE), None)
        if first is None or first == 0:
            continue
        answer = [tok for tok, label in zip(ids, row_labels) if label != IGNORE]
        if answer and answer[-1] == tokenizer.eos_token_id:
            answer = answer[:-1]
        out.append(EvalRow(i, ids[:first], answer, tokenizer.decode(answer, skip_special_tokens=True).strip(), {}))
        if len(out) == cap:
            break
    return out


@contextmanager
def padded_attention(model: Any) -> Iterator[None]:
    """The model with an attention for padded batches and caches, in eval mode, while inside; as it was after. The
    training run may have set one made for flattened batches (ft.model.packed_attention)."""
    from ft.model.packed_attention import PER_ROW_EAGER, VARLEN, modifies_scores

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    flattened = base.config._attn_implementation
    if flattened in (VARLEN, PER_ROW_EAGER):
        own = "eager" if flattened == PER_ROW_EAGER or modifies_scores(base.config) else "sdpa"
        base.set_attn_implementation(own)
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if base.config._attn_implementation != flattened:
            base.set_attn_implementation(flattened)


def generation_metrics(model: Any, tokenizer: Any, rows: list[EvalRow], e: EvaluationConfig, batch_size: int) -> dict[str, float]:
    """{eval_<metric>: corpus score} of the model's answers to `rows`; the model is left in the mode it was in.
    Every process answers the same rows (no collective), so each has the metric that picks the best checkpoint."""
    from ft.evaluate.metrics import corpus_scores

    answers: dict[int, str] = {}
    with padded_attention(model):
        for batch in batches(rows, batch_size):
            answers.update(zip((r.id for r in batch), generate_batch(model, tokenizer, batch, e)))
    predictions, references = [answers[r.id] for r in rows], [r.reference for r in rows]
    scores: dict[str, float] = {}
    for name in e.eval_causal_lm_metrics:
        scores.update({f"eval_{k}": v for k, v in corpus_scores(name, predictions, references, e).items()})
    return scores
