"""Knowledge distillation: the student learns the frozen teacher's distribution over the next token.

Both models run over the same batch (packed, padding-free or padded, as any batch). Their final hidden states
are caught and the loss is taken a chunk of trained positions at a time: the student's logits of the chunk are
recomputed in the backward pass (torch.utils.checkpoint) and the teacher's are built under no_grad, so neither
model's logits for the whole batch ever exist. Per trained position (label not -100), with p the teacher's and q
the student's softmax at temperature T over the tokenizer's vocabulary (head rows beyond it, padding, are left
out of both):

    kd_alpha · T² · D(p, q) + kd_ce_alpha · CE(student logits, label)

D is KL(p‖q) for kd_beta 0, KL(q‖p) for kd_beta 1, and β·KL(p‖m) + (1−β)·KL(q‖m), m = β·p + (1−β)·q between.
With kd_top_k = k, both distributions are reduced to the teacher's k most likely tokens and one bucket holding
the rest of each one's mass (a coarser partition: D over it never exceeds D over the whole vocabulary). The sum
over positions is divided by the trained tokens of the whole optimizer step (num_items_in_batch), as ft's
cross-entropy is, so that gradient accumulation and several processes give the loss of one large batch.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ft.data.labels import IGNORE

TERMS = ("kd_loss", "ce_loss")


def divergence(teacher_logp: Any, student_logp: Any, beta: float) -> Any:
    """D(p, q) per row from log-probabilities (rows × buckets), as the module docstring defines it."""
    import torch

    def kl(log_a: Any, log_b: Any) -> Any:  # KL(a‖b), 0·log 0 = 0
        return torch.where(log_a > -math.inf, log_a.exp() * (log_a - log_b), 0.0).sum(-1)

    if beta == 0:
        return kl(teacher_logp, student_logp)
    if beta == 1:
        return kl(student_logp, teacher_logp)
    mixture = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), dim=0)
    return beta * kl(teacher_logp, mixture) + (1 - beta) * kl(student_logp, mixture)


def with_tail(logp: Any) -> Any:
    """Log-probabilities of k chosen tokens → k + 1 buckets, the last holding the rest of the mass."""
    import torch

    rest = torch.log1p(-logp.exp().sum(-1, keepdim=True).clamp(max=1.0))
    return torch.cat([logp, rest], dim=-1)


def teacher_top_k(teacher_logits: Any, temperature: float, k: int) -> tuple[Any, Any]:
    """(ids, log-probabilities) of the teacher's k most likely tokens at temperature T, per position: what the
    cache keeps and what the live top-k loss compares with."""
    import torch

    logp = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, ids = logp.topk(k, dim=-1)
    return ids, values


def teacher_logits(states: Any, head: Any, softcap: Optional[float]) -> Any:
    import torch

    with torch.no_grad():
        logits = head(states).float()
        return torch.tanh(logits / softcap) * softcap if softcap else logits


def _chunk(states: Any, targets: Any, head: Any, softcap: Optional[float], vocab: int, temperature: float,
           beta: float, teacher: Optional[tuple[Any, Any, Optional[float]]], top_ids: Any, top_logp: Any) -> Any:
    """(KD sum, CE sum) of one chunk of positions. The teacher's side comes as its hidden states, head and
    soft-cap (whole vocabulary: its logits are rebuilt here, and again when the backward pass recomputes the
    chunk, so that they are never kept), or as its top-k (ids, log-probabilities)."""
    import torch
    import torch.nn.functional as F

    logits = head(states).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ce = F.cross_entropy(logits, targets, reduction="sum")
    student = torch.log_softmax(logits[:, :vocab] / temperature, dim=-1)
    if teacher is not None:
        teacher_logp = torch.log_softmax(teacher_logits(*teacher)[:, :vocab] / temperature, dim=-1)
        return torch.stack([divergence(teacher_logp, student, beta).sum(), ce])
    kd = divergence(with_tail(top_logp), with_tail(student.gather(-1, top_ids)), beta).sum()
    return torch.stack([kd, ce])


def distillation_loss(hidden: Any, labels: Any, head: Any, *, vocab: int, temperature: float, beta: float,
                      alpha: float, ce_alpha: float, teacher_hidden: Any = None, teacher_head: Any = None,
                      teacher_softcap: Optional[float] = None, top_k: Optional[int] = None, cached: Any = None,
                      softcap: Optional[float] = None, num_items_in_batch: Any = None,
                      chunk: int = 1024) -> tuple[Any, Any, int]:
    """(loss, the KD and CE sums over the trained positions, how many there are) of a batch, from the student's final hidden states and head
    and the teacher's (live), or the teacher's cached top-k (ids, log-probabilities) of the trained positions in
    order (`cached`). Divided by num_items_in_batch when given, else by the batch's trained tokens."""
    import torch
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:].reshape(-1)
    trained = targets != IGNORE
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])[trained]
    targets = targets[trained]
    teacher_states = None
    if cached is None:
        teacher_states = teacher_hidden[:, :-1].reshape(-1, teacher_hidden.shape[-1])[trained]
    sums = hidden.new_zeros(2, dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk):
        end = start + chunk
        teacher = top_ids = top_logp = None
        if cached is not None:
            top_ids, top_logp = cached[0][start:end], cached[1][start:end]
        elif top_k is not None:
            logits = teacher_logits(teacher_states[start:end], teacher_head, teacher_softcap)
            top_ids, top_logp = teacher_top_k(logits[:, :vocab], temperature, top_k)
        else:
            teacher = (teacher_states[start:end], teacher_head, teacher_softcap)
        sums = sums + checkpoint(_chunk, states[start:end], targets[start:end], head, softcap, vocab, temperature, beta,
                                 teacher, top_ids, top_logp, use_reentrant=False)
    count = int(targets.shape[0])
    items = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    loss = (alpha * temperature ** 2 * sums[0] + ce_alpha * sums[1]) / items
    return loss, sums.detach(), count
