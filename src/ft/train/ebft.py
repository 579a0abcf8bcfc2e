"""Energy-based fine-tuning's pieces (config/online.py says what EBFT is): features, rewards, advantages, and
the strided layout in which every anchor's rollout is sampled and trained in one sequence.

Rewards, per prompt (or per anchor), from the samples' feature vectors g_1..g_N and the answer's f:
    alignment_j = 2·cos(g_j, f), diversity_j = 2/(N−1)·Σ_{k≠j} g_j·g_k, reward_j = a·alignment_j − d·diversity_j,
and the feature-matching distance ‖mean_j g_j − f‖² is logged (Jelassi et al. 2026, eq. 2 and 7).

Strided layout of one text of S tokens with anchors a_0 < a_1 < ... (NB of them) and G tokens sampled at each:
the text, then the sampled tokens step by step (token s of anchor b at S + s·NB + b). The text attends
causally; sampled token (s, b) attends to the text before a_b and to tokens (0..s, b), at position a_b + s: the
same numbers as the text's first a_b tokens followed by that rollout alone (tests/test_ebft.py checks it).
"""

from __future__ import annotations

from typing import Any, Optional

SCALE_EPS = 1e-4  # TRL's GRPO: advantages / (std + 1e-4)
NORM_EPS = 1e-8


def layer_indices(fractions: tuple[float, ...], num_layers: int) -> list[int]:
    """The hidden states (0: the embeddings, i: the output of layer i) that are the features."""
    return [int(f * num_layers) for f in fractions]


def pool(hidden: Any, method: str, mask: Any, prompt_lengths: Optional[Any] = None) -> Any:
    """(rows, positions, D) per-token features → (rows, D) per text; `mask` marks each row's tokens (right padded)."""
    import torch

    lengths = mask.sum(dim=1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if method == "last_token":
        return hidden[rows, lengths - 1]
    if method == "concat":
        return torch.cat([hidden[rows, lengths * k // 4] for k in (1, 2, 3)], dim=-1)
    keep = mask.bool()
    if method == "completion_mean":
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        keep = keep & (positions >= prompt_lengths[:, None])
    weights = keep.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def whiten(samples: Any, answer: Any, tol: float = 1e-5) -> tuple[Any, Any]:
    """Both sets times W = U·diag(1/s)·Uᵀ, from the SVD of the samples' features (directions with a singular value
    under tol × the largest are dropped)."""
    import torch

    u, s, _ = torch.linalg.svd(samples.float().T, full_matrices=False)
    inverse = torch.where(s > tol * s.max(), 1.0 / s, torch.zeros_like(s))
    w = (u * inverse) @ u.T
    return samples.float() @ w, answer.float() @ w


def rewards(samples: Any, answer: Any, alignment_coef: float, diversity_coef: float) -> dict[str, Any]:
    """samples (..., N, D), answer (..., D) → reward, alignment, diversity (..., N) and cfm (...)."""
    import torch

    samples, answer = samples.float(), answer.float()
    n = samples.shape[-2]
    alignment = 2 * torch.nn.functional.cosine_similarity(samples, answer[..., None, :].expand_as(samples), dim=-1)
    if n > 1:
        dots = samples @ samples.transpose(-1, -2)
        others = dots.sum(dim=-1) - dots.diagonal(dim1=-2, dim2=-1)
        diversity = 2 * others / (n - 1)
    else:
        diversity = torch.zeros_like(alignment)
    cfm = ((samples.mean(dim=-2) - answer) ** 2).sum(dim=-1)
    return {"reward": alignment_coef * alignment - diversity_coef * diversity, "alignment": alignment,
            "diversity": diversity, "cfm": cfm}


def advantages(reward: Any, estimator: str) -> Any:
    """reward (..., N) over one prompt's (or anchor's) N samples → each sample's advantage.

    grpo / grpo_scaled: reward − mean (÷ (std + 1e-4), TRL's); rloo: reward − the mean of the others';
    group_norm: (reward − mean) / (std + 1e-8); reinforce: the reward itself."""
    n = reward.shape[-1]
    mean = reward.mean(dim=-1, keepdim=True)
    if estimator == "reinforce" or n == 1:
        return reward
    if estimator == "rloo":
        return reward - (reward.sum(dim=-1, keepdim=True) - reward) / (n - 1)
    if estimator == "group_norm":
        return (reward - mean) / (reward.std(dim=-1, keepdim=True) + NORM_EPS)
    if estimator == "grpo_scaled":
        return (reward - mean) / (reward.std(dim=-1, keepdim=True) + SCALE_EPS)
    return reward - mean


def anchors(length: int, prompt_length: int, stride: int, context_length: int, generate: int,
            min_completion_prefix: int) -> list[int]:
    """Where the rollouts start in a text of `length` tokens: from context_length (a text without a prompt) or
    min_completion_prefix tokens into the answer, every `stride` tokens, each with `generate` tokens after it."""
    first = max(prompt_length + min_completion_prefix, context_length) if prompt_length else context_length
    count = (length - generate - first) // stride + 1
    return [first + b * stride for b in range(max(count, 0))]


def strided_layout(length: int, starts: list[int], steps: int, total: int, device: Any) -> tuple[Any, Any]:
    """(allowed (total, total) bool, positions (total,)) for a text of `length` tokens followed by `steps` sampled
    tokens per anchor (module docstring), padded to `total` (padding attends to itself only)."""
    import torch

    nb = len(starts)
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    allowed[:length, :length] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    positions = torch.arange(total, device=device)
    if steps and nb:
        start = torch.tensor(starts, device=device)
        step = torch.arange(steps, device=device)
        index = length + step[:, None] * nb + torch.arange(nb, device=device)[None]  # (steps, nb)
        text = torch.arange(length, device=device)
        allowed[index.reshape(-1)[:, None], text[None]] = (text[None, None] < start[None, :, None]).expand(
            steps, nb, length).reshape(-1, length)
        same = index.T  # (nb, steps): the rollout's own tokens, causal among themselves
        causal = torch.ones(steps, steps, dtype=torch.bool, device=device).tril()
        allowed[same[:, :, None], same[:, None, :]] = causal[None].expand(nb, steps, steps)
        positions[index] = start[None] + step[:, None]
    used = length + steps * nb
    pad = torch.arange(used, total, device=device)
    allowed[pad, pad] = True
    positions[used:] = 0
    return allowed, positions


def predictors(length: int, starts: list[int], steps: int, device: Any) -> Any:
    """(steps, nb): the position whose logits sample token (s, b): the text's token before the anchor for s = 0,
    the rollout's previous token after."""
    import torch

    nb = len(starts)
    out = torch.empty(steps, nb, dtype=torch.long, device=device)
    out[0] = torch.tensor(starts, device=device) - 1
    if steps > 1:
        out[1:] = length + torch.arange(steps - 1, device=device)[:, None] * nb + torch.arange(nb, device=device)[None]
    return out


def additive(allowed: Any, dtype: Any) -> Any:
    """A bool mask (query, key) as the additive 4-D mask attention implementations take: 0 or the dtype's min."""
    import torch

    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[None, None]


def sample(logits: Any, temperature: float, top_p: float = 1.0, top_k: Optional[int] = None,
           generator: Any = None) -> Any:
    """One token per row of logits (…, V): greedy at temperature 0, else from softmax(logits / T) cut to the
    top_k most likely and to the smallest set holding top_p of the mass."""
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(dim=-1)
    if top_p < 1.0:
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(dim=-1) - ordered  # the mass of the tokens ahead of each
        ordered = ordered.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, ordered)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
