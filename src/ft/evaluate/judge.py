"""Pairwise judging by a local causal LM: asked which of two answers is better, the judge's next-token
probabilities of "1" and "2" decide. Each pair is asked in both orders; B wins only when the judge picks it in
both, loses only when it picks A in both, and ties otherwise (a judge swayed by position gives ties, counted as
inconsistent). Swapping the two runs swaps every win and loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ft.errors import ConfigError

QUESTION = ("Which response answers the request better?\n\nRequest:\n{prompt}\n\nResponse 1:\n{first}\n\n"
            "Response 2:\n{second}\n\nReply with the number of the better response, 1 or 2.")


def _load(path: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft.model.precision import device

    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"--judge: no model in {path} (config.json is missing); give a local causal LM folder")
    model = AutoModelForCausalLM.from_pretrained(path).to(device()).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _text(tokenizer: Any, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return question + "\nAnswer:"


def prefers_second(model: Any, tokenizer: Any, prompt: str, first: str, second: str) -> float:
    """log p("2") - log p("1") as the judge's next token: > 0 when it prefers the second response."""
    import torch

    ids = tokenizer(_text(tokenizer, QUESTION.format(prompt=prompt, first=first, second=second)), return_tensors="pt")
    one, two = (tokenizer.encode(d, add_special_tokens=False)[-1] for d in ("1", "2"))
    with torch.no_grad():
        logits = model(**{k: v.to(next(model.parameters()).device) for k, v in ids.items()}).logits[0, -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(logp[two] - logp[one])


def verdict(model: Any, tokenizer: Any, prompt: str, a: str, b: str) -> tuple[str, bool]:
    """("win" | "tie" | "loss" for B, whether the two orders disagreed)."""
    if a.strip() == b.strip():
        return "tie", False
    as_second = prefers_second(model, tokenizer, prompt, a, b)  # > 0: B preferred, shown second
    as_first = -prefers_second(model, tokenizer, prompt, b, a)  # > 0: B preferred, shown first
    if as_second > 0 and as_first > 0:
        return "win", False
    if as_second < 0 and as_first < 0:
        return "loss", False
    return "tie", as_second * as_first < 0


def judge_pairs(path: str, pairs: list[tuple[str, str, str]], ids: list[int]) -> dict[str, Any]:
    model, tokenizer = _load(path)
    verdicts = [verdict(model, tokenizer, prompt, a, b) for prompt, a, b in pairs]
    return {"model": path, "wins": sum(v == "win" for v, _ in verdicts), "ties": sum(v == "tie" for v, _ in verdicts),
            "losses": sum(v == "loss" for v, _ in verdicts), "inconsistent": sum(c for _, c in verdicts),
            "verdicts": {str(i): v for i, (v, _) in zip(ids, verdicts)}}
