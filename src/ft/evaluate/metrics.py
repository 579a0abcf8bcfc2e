"""The metrics `ft eval` computes from predictions and references, each registered under its YAML name.

Standard metrics come from their own well-kept libraries (sacrebleu for BLEU and chrF, rouge-score for ROUGE);
exact match and token F1 follow SQuAD's answer normalisation (lower case, no punctuation, no articles, single
spaces). A metric maps (predictions, references) to {name: corpus score} and gives per-row scores where the
metric has them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

from ft.registry import Registry

Scores = dict[str, float]


@dataclass(frozen=True)
class Metric:
    corpus: Callable[[list[str], list[str]], Scores]
    row: Optional[Callable[[str, str], Scores]] = None  # per-row scores for predictions.jsonl


METRICS: Registry[Metric] = Registry("metric")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and the articles a/an/the removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _mean(fn: Callable[[str, str], float], name: str) -> Metric:
    def corpus(predictions: list[str], references: list[str]) -> Scores:
        return {name: 100 * sum(fn(p, r) for p, r in zip(predictions, references)) / max(len(predictions), 1)}

    return Metric(corpus, lambda p, r: {name: 100 * fn(p, r)})


METRICS.add("exact_match", _mean(exact_match, "exact_match"), aliases=("em",))
METRICS.add("f1", _mean(token_f1, "f1"))


def _bleu(predictions: list[str], references: list[str]) -> Scores:
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score}


def _chrf(predictions: list[str], references: list[str]) -> Scores:
    import sacrebleu

    return {"chrf": sacrebleu.corpus_chrf(predictions, [references]).score}


METRICS.add("bleu", Metric(_bleu, lambda p, r: {"bleu": __import__("sacrebleu").sentence_bleu(p, [r]).score}),
            aliases=("sacrebleu",))
METRICS.add("chrf", Metric(_chrf, lambda p, r: {"chrf": __import__("sacrebleu").sentence_chrf(p, [r]).score}))


class UnicodeWords:
    """rouge-score's tokenizer keeps only [a-z0-9]: every non-ASCII word would vanish. Words here are any
    letters or digits, lower-cased."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def _rouge_row(prediction: str, reference: str) -> Scores:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeWords())
    return {name: 100 * s.fmeasure for name, s in scorer.score(reference, prediction).items()}


def _rouge(predictions: list[str], references: list[str]) -> Scores:
    rows = [_rouge_row(p, r) for p, r in zip(predictions, references)]
    return {k: sum(r[k] for r in rows) / max(len(rows), 1) for k in ("rouge1", "rouge2", "rougeL")}


METRICS.add("rouge", Metric(_rouge, _rouge_row))
