"""`ft preprocess --debug`: the first examples as the model sees them, trained tokens marked.

On a terminal, trained text is green and masked text dim; otherwise trained text is wrapped in [[ ]].
"""

from __future__ import annotations

from typing import Any

from ft.data.labels import IGNORE, count_trained

GREEN, DIM, RESET = "\033[32m", "\033[2m", "\033[0m"


def render_example(ids: list[int], labels: list[int], tokenizer: Any, colour: bool) -> str:
    spans: list[tuple[bool, list[int]]] = []
    for token, label in zip(ids, labels):
        trained = label != IGNORE
        if spans and spans[-1][0] == trained:
            spans[-1][1].append(token)
        else:
            spans.append((trained, [token]))
    out = []
    for trained, tokens in spans:
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        if colour:
            out.append(f"{GREEN if trained else DIM}{text}{RESET}")
        else:
            out.append(f"[[{text}]]" if trained else text)
    return "".join(out)


def show_examples(table: Any, tokenizer: Any, count: int, colour: bool) -> str:
    ids = table.column("input_ids").to_pylist()[:count]
    labels = table.column("labels").to_pylist()[:count]
    legend = "trained text in green, masked text dim" if colour else "trained text inside [[ ]], the rest is masked"
    blocks = [f"first {len(ids)} training examples ({legend}):"]
    for n, (i, l) in enumerate(zip(ids, labels)):
        trained = count_trained(l)
        blocks.append(f"--- example {n} ({len(i)} tokens, {trained} trained) ---\n{render_example(i, l, tokenizer, colour)}")
    return "\n".join(blocks)
