"""Multiple choice by log-likelihood, as lm-evaluation-harness scores it: each choice's summed log-probability
given the prompt (acc: the highest; acc_norm: the highest per character of the choice).

A test row holds a question (`question`, `instruction`, `query`, `prompt` or `ctx`), an optional `input`, its
choices (`choices`, `endings` or `options`: a list of texts) and the answer (`answer`, `label` or `gold`: the
choice's index, its letter A, B, ..., or its text). The prompt is the first dataset's format around the question,
and prompt + choice are tokenized together exactly as training tokenizes prompt + output (the same offsets,
BOS and special tokens); the choice's tokens are the ones training would take the loss on, the end of sequence
left out. Scoring runs a batch of rows at once: the prompts' forward once, its key/value cache copied for each
choice, then every choice of the batch in one forward (methods that put virtual tokens before the input, prompt
and prefix tuning, run prompt + choice whole instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from ft.config.data import DataConfig, DatasetConfig
from ft.data.formats import Format, Segment, build_format
from ft.errors import DataError

QUESTION = ("question", "instruction", "query", "prompt", "ctx")
CHOICES = ("choices", "endings", "options")
ANSWER = ("answer", "label", "gold")


@dataclass(frozen=True)
class ChoiceRow:
    id: int
    context_ids: tuple[int, ...]
    choice_ids: tuple[tuple[int, ...], ...]
    choices: tuple[str, ...]
    answer: int
    prompt: str


def is_multiple_choice(row: Mapping[str, Any]) -> bool:
    return any(isinstance(row.get(k), list) for k in CHOICES)


def _field(row: Mapping[str, Any], names: tuple[str, ...], what: str) -> Any:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise DataError(f"no {what} (a column named {', '.join(f'`{n}`' for n in names)})")


def answer_index(value: Any, choices: list[str]) -> int:
    """The answer as an index into `choices`: an index, a letter (A = the first), or the choice's text."""
    if isinstance(value, bool):
        raise DataError(f"the answer `{value}` is not a choice")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        index = ord(value.strip().upper()) - ord("A")
    elif isinstance(value, str) and value in choices:
        index = choices.index(value)
    else:
        raise DataError(f"the answer `{value}` is neither a choice's index, its letter nor its text")
    if not 0 <= index < len(choices):
        raise DataError(f"the answer `{value}` points past the {len(choices)} choices")
    return index


class PromptAndChoice(Format):
    """The prompt as the dataset's format renders it, then one choice in place of the output."""

    def __init__(self, inner: Format) -> None:
        super().__init__(inner.ds, inner.tokenizer)
        self.append_eos = inner.append_eos  # type: ignore[misc]  (the BOS rule follows the real format's)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(row["prompt"], False), Segment(row["choice"], True)]


def choice_rows(rows: list[dict[str, Any]], ds: DatasetConfig, data: DataConfig, tokenizer: Any) -> tuple[list[ChoiceRow], int]:
    """The rows as prompts and tokenized choices, and how many were left out (a choice longer than sequence_len)."""
    from ft.data.labels import IGNORE
    from ft.data.tokenize import RowTokenizer
    from ft.tokenizer.load import adds_bos

    fmt = build_format(ds, tokenizer) if ds.type is not None else Format(ds, tokenizer)  # no format: the bare question
    tokenize = RowTokenizer(ds, data.model_copy(update={"train_on_inputs": False, "excess_length_strategy": "drop"}),
                            tokenizer, adds_bos(tokenizer), fmt=PromptAndChoice(fmt))
    out, skipped = [], 0
    for i, row in enumerate(rows):
        try:
            choices = _field(row, CHOICES, "choices")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
                raise DataError("the choices are not a list of two or more texts")
            answer = answer_index(_field(row, ANSWER, "answer"), choices)
            question = _field(row, QUESTION, "question")
            prompt = fmt.prompt_for(str(question), str(row.get("input") or ""))
        except DataError as exc:
            raise DataError(f"dataset `{ds.path}` row {i}: {exc}") from None
        t = tokenize([{"prompt": prompt, "choice": c} for c in choices], first_index=i)
        if len(t.input_ids) != len(choices):
            skipped += 1
            continue
        firsts = [next(j for j, label in enumerate(labels) if label != IGNORE) for labels in t.labels]
        ends = [len(ids) - (1 if fmt.append_eos and ids[-1] == tokenizer.eos_token_id else 0) for ids in t.input_ids]
        # the prompt's tokens; shorter where a choice's first token took in the prompt's last characters
        cut = min(len(os.path.commonprefix(t.input_ids)), *firsts)
        if cut == 0:
            skipped += 1
            continue
        context = tuple(t.input_ids[0][:cut])
        continuations = tuple(tuple(ids[cut:end]) for ids, end in zip(t.input_ids, ends))
        out.append(ChoiceRow(i, context, continuations, tuple(choices), answer, prompt))
    return out, skipped


def shares_prompt(model: Any) -> bool:
    """False for PEFT's prompt-learning methods (virtual tokens or prefixes go before the input: no shared cache)."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    return not getattr(config, "is_prompt_learning", False)


def score_batch(model: Any, rows: list[ChoiceRow], pad_id: int) -> list[list[float]]:
    """Each row's choices' summed log-likelihoods given its prompt."""
    import torch

    with torch.no_grad():
        if shares_prompt(model):
            return _shared(model, rows, pad_id)
        return _whole(model, rows, pad_id)


def _shared(model: Any, rows: list[ChoiceRow], pad_id: int) -> list[list[float]]:
    import torch

    device = next(model.parameters()).device
    width = max(len(r.context_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left-padded: every prompt ends in the last column
        ids[i, width - len(r.context_ids):] = torch.tensor(r.context_ids)
        mask[i, width - len(r.context_ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    after_prompt = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    owner = [i for i, r in enumerate(rows) for _ in r.choice_ids]
    choices = [c for r in rows for c in r.choice_ids]
    named = "cache" if hasattr(out, "cache") else "past_key_values"  # transformers renamed it in 5.2x
    cache = getattr(out, named)
    cache.reorder_cache(torch.tensor(owner, device=device))
    longest = max(len(c) for c in choices)
    lls = [float(after_prompt[o, c[0]]) for o, c in zip(owner, choices)]
    if longest > 1:
        tail = torch.full((len(choices), longest - 1), pad_id, dtype=torch.long)
        tail_mask = torch.zeros((len(choices), longest - 1), dtype=torch.long)
        for j, c in enumerate(choices):
            tail[j, : len(c) - 1] = torch.tensor(c[:-1])
            tail_mask[j, : len(c) - 1] = 1
        index = torch.tensor(owner, device=device)
        full_mask = torch.cat([mask[index], tail_mask.to(device)], dim=1)
        positions = mask.sum(-1)[index][:, None] + torch.arange(longest - 1, device=device)[None]
        logits = model(input_ids=tail.to(device), attention_mask=full_mask, position_ids=positions,
                       use_cache=True, **{named: cache}).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for j, c in enumerate(choices):
            if len(c) > 1:
                targets = torch.tensor(c[1:], device=device)
                lls[j] += float(logp[j, : len(c) - 1].gather(-1, targets[:, None]).sum())
    return _per_row(rows, lls)


def _whole(model: Any, rows: list[ChoiceRow], pad_id: int) -> list[list[float]]:
    import torch

    device = next(model.parameters()).device
    pairs = [(r.context_ids, c) for r in rows for c in r.choice_ids]
    width = max(len(a) + len(b) for a, b in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for j, (a, b) in enumerate(pairs):  # right-padded
        ids[j, : len(a) + len(b)] = torch.tensor(a + b)
        mask[j, : len(a) + len(b)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -width:]  # after virtual tokens
    logp = torch.log_softmax(logits.float(), dim=-1)
    lls = []
    for j, (a, b) in enumerate(pairs):
        targets = torch.tensor(b, device=device)
        lls.append(float(logp[j, len(a) - 1 : len(a) + len(b) - 1].gather(-1, targets[:, None]).sum()))
    return _per_row(rows, lls)


def _per_row(rows: list[ChoiceRow], lls: list[float]) -> list[list[float]]:
    out, k = [], 0
    for r in rows:
        out.append(lls[k : k + len(r.choice_ids)])
        k += len(r.choice_ids)
    return out


def record(r: ChoiceRow, lls: list[float]) -> dict[str, Any]:
    """A row of predictions.jsonl: the log-likelihoods, the picks and whether they are right (acc, acc_norm as
    lm-eval counts them: the first of equal scores wins; acc_norm divides by the choice's length in characters)."""
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
    normed = [ll / len(c) for ll, c in zip(lls, r.choices)]
    pred_norm = max(range(len(lls)), key=lambda i: (normed[i], -i))
    return {"id": r.id, "prompt": r.prompt, "choices": list(r.choices), "answer": r.answer, "loglikelihoods": lls,
            "pred": pred, "pred_norm": pred_norm, "scores": {"acc": float(pred == r.answer), "acc_norm": float(pred_norm == r.answer)}}


def fixed_batches(rows: list[ChoiceRow], size: int) -> list[list[ChoiceRow]]:
    """Batches over all the rows, by prompt length, whatever is already done: a resumed run recomputes a batch
    with the same rows beside each other, so its numbers are the same to the last bit."""
    ordered = sorted(rows, key=lambda r: (len(r.context_ids), r.id))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def corpus(written: list[dict[str, Any]]) -> dict[str, float]:
    n = len(written)
    return {k: sum(w["scores"][k] for w in written) / n for k in ("acc", "acc_norm")}
