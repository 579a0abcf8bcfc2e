"""The training loss without the sequence × vocabulary logits: chunked cross-entropy over the final hidden states.

An 8B model's head has 128,256 outputs; at 32k tokens its fp32 logits alone are 16 GB, and the plain loss
keeps them (and their gradient) for the backward pass. Here the model runs with `logits_to_keep=1`, the
decoder's last hidden state is caught by a forward hook, and the loss is taken a chunk of positions at a
time; each chunk's logits are recomputed in the backward pass (torch.utils.checkpoint), so at most one
chunk of logits is ever alive. Only positions with a label are computed (with the output-only loss most
are not). The value and gradients equal the plain loss: fp32 logits, the same shift, `-100` ignored, the
sum divided by num_items_in_batch when the Trainer passes it (the normalization across gradient
accumulation), else by the trained tokens.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from ft.data.labels import IGNORE

log = logging.getLogger("ft")

# Model types whose head output is the logits as they are (or soft-capped, Gemma-2's final_logit_softcapping).
PLAIN_HEADS = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"})
CHUNK_BYTES = 1 << 28  # fp32 logits per chunk: 256 MB (≈ 520 positions at a 128k vocabulary)


def chunk_size(vocab: int) -> int:
    return max(64, CHUNK_BYTES // (4 * vocab))


def chunked_loss_refusal(model_type: str, sharding: str) -> Optional[str]:
    """Why the chunked loss cannot run for this model, or None when it can. `sharding` names a backend under
    which the head's weight is whole only inside the model's forward (ft.launch.backend.shards_whole_modules):
    the chunks run the head outside it, and again in the backward pass."""
    if model_type not in PLAIN_HEADS:
        return f"model type `{model_type}` may transform its logits in ways ft does not know"
    if sharding:
        return f"{sharding} gathers the head's weight only inside the model's forward"
    return None


def entropy_weights(logits: Any, alpha: float, k: int) -> Any:
    """EAFT's weight of each position (rows of `logits`): the entropy of the softmax over its k largest logits,
    raised to `alpha`; no gradient flows through it."""
    import torch

    with torch.no_grad():
        top = torch.topk(logits.detach().float(), k=min(k, logits.shape[-1]), dim=-1).values
        p = top.softmax(dim=-1)
        return (-(p * torch.log(p + 1e-10)).sum(dim=-1)).pow(alpha)


def _chunk_loss(hidden: Any, labels: Any, head: Any, softcap: Optional[float], eaft: Optional[tuple[float, int]] = None) -> Any:
    import torch
    import torch.nn.functional as F

    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if eaft is None:
        return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    losses = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    return (losses * entropy_weights(logits, *eaft)).sum()


def chunked_cross_entropy(hidden: Any, labels: Any, head: Any, *, softcap: Optional[float] = None,
                          num_items_in_batch: Any = None, chunk: int = 1024, eaft: Optional[tuple[float, int]] = None,
                          shifted: bool = False) -> Any:
    """The causal-LM loss of `labels` (batch × tokens) from the final hidden states (batch × tokens × width), each
    token's term weighted by entropy_weights when `eaft` (alpha, k) is given. `head` may be the identity with the
    logits for `hidden` (a model whose head ft does not run itself). `shifted`: each position's label is already
    the token it predicts (context parallelism's slices)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    targets = (labels if shifted else labels[:, 1:]).reshape(-1)
    states = (hidden if shifted else hidden[:, :-1]).reshape(-1, hidden.shape[-1])
    trained = targets != IGNORE
    states, targets = states[trained], targets[trained]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk):
        end = start + chunk
        total = total + checkpoint(_chunk_loss, states[start:end], targets[start:end], head, softcap, eaft,
                                   use_reentrant=False)
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    return total / targets.shape[0]


class HiddenStates:
    """Catches the decoder's last hidden state during a forward pass (a forward hook on the decoder)."""

    def __init__(self) -> None:
        self.value: Any = None

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        self.value = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


@contextmanager
def catch_hidden_states(causal_lm: Any) -> Iterator[HiddenStates]:
    caught = HiddenStates()
    handle = causal_lm.get_decoder().register_forward_hook(caught)
    try:
        yield caught
    finally:
        handle.remove()


def causal_lm_of(model: Any) -> Any:
    """The transformers CausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _chunk_logps(hidden: Any, targets: Any, head: Any, softcap: Optional[float]) -> Any:
    import torch

    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def token_logps(states: Any, targets: Any, head: Any, softcap: Optional[float], chunk: int) -> Any:
    """log p(target) of each of `states` (positions, D) under the head, a chunk of positions at a time, each
    chunk's logits recomputed in the backward pass: the whole logits never exist (preference, EBFT, diffusion)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    pieces = [checkpoint(_chunk_logps, states[a:a + chunk], targets[a:a + chunk], head, softcap, use_reentrant=False)
              for a in range(0, len(targets), chunk)]
    return torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)
