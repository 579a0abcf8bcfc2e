"""`ft eval --compare A B`: two runs' predictions on the same test set, side by side. Per metric: each run's mean,
the difference B - A and its 95% paired-bootstrap interval (rows drawn with replacement, both runs' scores of a
drawn row kept together), real when the interval leaves out 0; the rows where they differ most; a plot. With a
judge (a local causal LM), each pair of answers is judged in both orders and a side wins only when it wins both
(a judge that prefers a position gives a tie): win / tie / loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ft.errors import ConfigError, DataError

RESAMPLES = 2000


def predictions_file(where: str) -> Path:
    """A predictions.jsonl, or the one in a folder (an eval-* folder, or a run whose output_dir has one)."""
    path = Path(where)
    if path.is_file():
        return path
    if (path / "predictions.jsonl").is_file():
        return path / "predictions.jsonl"
    found = sorted(path.glob("eval-*/predictions.jsonl")) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"--compare: {where} holds several evaluations ({', '.join(str(f.parent.name) for f in found)}); "
                          "name one of their folders")
    raise ConfigError(f"--compare: no predictions in {where}; run `ft eval` first, or give a predictions.jsonl")


def read(path: Path) -> dict[int, dict[str, Any]]:
    rows = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                rows[int(record["id"])] = record
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{n}: not a line of ft eval's predictions") from None
    return rows


def paired(a: dict[int, dict], b: dict[int, dict], names: tuple[str, str]) -> list[int]:
    """The ids both runs scored, checked to be the same test set (the same reference or answer per row)."""
    common = sorted(set(a) & set(b))
    if not common:
        raise DataError(f"{names[0]} and {names[1]} share no row: they are not predictions of the same test set")
    for i in common:
        key = "answer" if "answer" in a[i] else "reference"
        if a[i].get(key) != b[i].get(key):
            raise DataError(f"row {i}: its {key} differs between {names[0]} and {names[1]}; compare runs on the same test set")
    return common


def metric_columns(a: dict[int, dict], b: dict[int, dict], ids: list[int]) -> dict[str, tuple[list[float], list[float]]]:
    """Per-row values of every metric both runs have on every row (and the loss per token where there is one)."""
    names = set.intersection(*(set(r.get("scores", {})) for r in (*(a[i] for i in ids), *(b[i] for i in ids))))
    out = {name: ([float(a[i]["scores"][name]) for i in ids], [float(b[i]["scores"][name]) for i in ids]) for name in sorted(names)}
    if all("loss" in a[i] and "loss" in b[i] and a[i].get("tokens") for i in ids):
        out["loss"] = ([a[i]["loss"] / a[i]["tokens"] for i in ids], [b[i]["loss"] / b[i]["tokens"] for i in ids])
    return out


def bootstrap(x: list[float], y: list[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean difference y - x, and its 2.5% and 97.5% paired-bootstrap percentiles)."""
    import numpy as np

    diff = np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(diff), size=(RESAMPLES, len(diff)))
    means = diff[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def compare(path_a: Path, path_b: Path, judge: Optional[str] = None, top: int = 5) -> dict[str, Any]:
    names = (str(path_a), str(path_b))
    a, b = read(path_a), read(path_b)
    ids = paired(a, b, names)
    columns = metric_columns(a, b, ids)
    if not columns:
        raise DataError(f"{names[0]} and {names[1]} have no metric in common to compare")
    metrics = {}
    for name, (x, y) in columns.items():
        mean, low, high = bootstrap(x, y)
        metrics[name] = {"a": sum(x) / len(x), "b": sum(y) / len(y), "difference": mean, "low": low, "high": high,
                         "real": not low <= 0 <= high}
    main = next((m for m in ("acc", "exact_match", "f1", "acc_norm") if m in columns), next(iter(columns)))
    x, y = columns[main]
    order = sorted(range(len(ids)), key=lambda k: (-abs(y[k] - x[k]), ids[k]))[:top]
    apart = [{"id": ids[k], main: {"a": x[k], "b": y[k]}, "prompt": a[ids[k]].get("prompt", ""),
              "a": _answer(a[ids[k]]), "b": _answer(b[ids[k]]), "reference": _reference(a[ids[k]])}
             for k in order if y[k] != x[k]]
    result = {"a": names[0], "b": names[1], "rows": len(ids), "metrics": metrics, "most_apart_by": main, "most_apart": apart}
    if judge:
        from ft.evaluate.judge import judge_pairs

        result["judge"] = judge_pairs(judge, [(a[i].get("prompt", ""), _answer(a[i]), _answer(b[i])) for i in ids], ids)
    return result


def _answer(record: dict) -> str:
    if "prediction" in record:
        return str(record["prediction"])
    return str(record["choices"][record["pred"]])


def _reference(record: dict) -> str:
    if "reference" in record:
        return str(record["reference"])
    return str(record["choices"][record["answer"]])


def table(result: dict[str, Any]) -> str:
    lines = [f"A: {result['a']}", f"B: {result['b']}", f"{result['rows']} rows in both", "",
             f"{'metric':<16}{'A':>10}{'B':>10}{'B - A':>10}   95% interval", ]
    for name, m in result["metrics"].items():
        lines.append(f"{name:<16}{m['a']:>10.4f}{m['b']:>10.4f}{m['difference']:>+10.4f}   [{m['low']:+.4f}, {m['high']:+.4f}]"
                     + ("  real" if m["real"] else "  within chance"))
    if result["most_apart"]:
        lines += ["", f"rows most apart by {result['most_apart_by']}:"]
        for row in result["most_apart"]:
            lines.append(f"  row {row['id']}: A {row['a'][:60]!r} · B {row['b'][:60]!r} · reference {row['reference'][:60]!r}")
    if "judge" in result:
        j = result["judge"]
        lines += ["", f"judge {j['model']}: B wins {j['wins']}, ties {j['ties']}, loses {j['losses']} "
                  f"({j['inconsistent']} of the ties: the judge's choice followed the position)"]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Each metric's difference B - A with its interval, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["metrics"])
    values = [result["metrics"][n]["difference"] for n in names]
    errors = [[v - result["metrics"][n]["low"] for n, v in zip(names, values)],
              [result["metrics"][n]["high"] - v for n, v in zip(names, values)]]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.2))
    ax.bar(names, values, yerr=errors, capsize=4, color=["tab:green" if result["metrics"][n]["real"] else "tab:gray" for n in names])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("B - A (95% paired bootstrap)")
    ax.set_title(f"{Path(result['b']).parent.name} vs {Path(result['a']).parent.name}, {result['rows']} rows", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
