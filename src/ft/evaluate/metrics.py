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
from functools import lru_cache
from typing import Any, Callable, Optional

from ft.registry import Registry

Scores = dict[str, float]


@dataclass(frozen=True)
class Metric:
    corpus: Callable[..., Scores]
    row: Optional[Callable[..., Scores]] = None  # per-row scores for predictions.jsonl
    configured: bool = False  # its functions take the evaluation section too (a model to load)


def corpus_scores(name: str, predictions: list[str], references: list[str], e: Any) -> Scores:
    m = METRICS.get(name)
    return m.corpus(predictions, references, e) if m.configured else m.corpus(predictions, references)


def row_scores(name: str, prediction: str, reference: str, e: Any) -> Scores:
    m = METRICS.get(name)
    if m.row is None:
        return {}
    return m.row(prediction, reference, e) if m.configured else m.row(prediction, reference)


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


@lru_cache(maxsize=2)
def bert_scorer(model: str, layers: Optional[int]) -> Any:
    """bert-score's scorer on a local encoder (loaded once per run)."""
    import json
    from pathlib import Path

    from ft.errors import ConfigError

    try:
        from bert_score import BERTScorer
    except ImportError:
        raise ConfigError("the metric `bertscore` needs bert-score: pip install 'ft[bench]'") from None
    config = Path(model) / "config.json"
    if not config.is_file():
        raise ConfigError(f"`bertscore_model`: no model in {model} (config.json is missing); give a local encoder folder")
    shape = json.loads(config.read_text())
    scorer = BERTScorer(model_type=model, num_layers=layers or shape.get("num_hidden_layers"))
    limit = shape.get("max_position_embeddings", 512) - 2
    if scorer._tokenizer.model_max_length > limit:  # a tokenizer saved without a length: the model's own
        scorer._tokenizer.model_max_length = limit
    return scorer


def _bertscore(predictions: list[str], references: list[str], e: Any) -> Scores:
    if not predictions:
        return {"bertscore_f1": 0.0}
    p, r, f = bert_scorer(e.bertscore_model, e.bertscore_num_layers).score(list(predictions), list(references), verbose=False)
    return {"bertscore_precision": 100 * float(p.mean()), "bertscore_recall": 100 * float(r.mean()),
            "bertscore_f1": 100 * float(f.mean())}


def _bertscore_row(prediction: str, reference: str, e: Any) -> Scores:
    return {"bertscore_f1": _bertscore([prediction], [reference], e)["bertscore_f1"]}


METRICS.add("bertscore", Metric(_bertscore, _bertscore_row, configured=True))
