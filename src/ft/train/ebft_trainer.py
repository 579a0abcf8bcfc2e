"""`rl: ebft`: the Trainer that samples from the model, scores the samples by their features against the rows'
answers (ft.train.ebft) and trains on the advantages.

Each row of a micro batch is a prompt (the tokens before its first trained one) and an answer (the trained
ones). Structured mode samples trl.num_generations answers per prompt with `generate`; the loss is GRPO's (the
probability ratio is 1 on the step that samples, so its gradient is −A·∇log π, clipped as TRL clips). Strided
mode samples generate_max_len tokens at each anchor of each text, n_samples_per_prompt times, token by token
over the strided layout; the loss is −Σ A·log π over the sampled tokens (REINFORCE with the chosen baseline).
Both add ce_coef × the cross-entropy of the answers. The features come from the model with its adapter off
(LoRA, QLoRA) or from a frozen copy taken before the first step (full fine-tuning), in eval mode.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Optional

from ft.config.online import EbftSettings, TrlSettings
from ft.data.labels import IGNORE
from ft.train import ebft as E
from ft.train.batches import REAL_TOKENS
from ft.train.trainer import MeanLossTrainer

METRICS = ("ebft/reward", "ebft/alignment", "ebft/diversity", "ebft/cfm_loss", "ebft/advantage_std", "ebft/sampled_tokens")


class EbftTrainer(MeanLossTrainer):
    """The Trainer with EBFT's loss (module docstring)."""

    settings: EbftSettings
    trl: Optional[TrlSettings] = None
    feature_model: Any = None  # full fine-tuning: the frozen copy the features come from
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    metric_names = METRICS
    _warned = False

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        inputs.pop(REAL_TOKENS, None)
        rows = []
        for ids, labels, mask in zip(inputs["input_ids"], inputs["labels"], inputs["attention_mask"]):
            length = int(mask.sum())
            trained = (labels[:length] != IGNORE).nonzero()
            if len(trained):
                rows.append((ids[:length], labels[:length], int(trained[0])))
        strided = self.settings.mode == "strided"
        loss, metrics = (self._strided if strided else self._structured)(model, rows)
        if metrics:
            self._keep("train" if model.training else "eval", metrics)
        elif not self._warned:
            self._warned = True
            import logging

            logging.getLogger("ft").warning(
                "EBFT: a micro batch had nothing to sample from (strided: no text reaches an anchor, which needs the "
                "prompt, min_completion_prefix and generate_max_len tokens); it trains nothing")
        return (loss, {"loss": loss}) if return_outputs else loss

    # -- the pieces both modes share

    def _causal_lm(self, model: Any) -> Any:
        from ft.train.loss import causal_lm_of

        return causal_lm_of(self.accelerator.unwrap_model(model))

    def _features(self, model: Any, ids: Any, mask: Any, positions: Any = None, each_layer_unit: bool = False) -> Any:
        """(rows, positions, k·D): the chosen layers' hidden states of the frozen features model, concatenated
        (each layer scaled to unit length first in strided mode, as the paper's critic does)."""
        import torch

        unwrapped = self.accelerator.unwrap_model(model)
        features_model = self.feature_model if self.feature_model is not None else unwrapped
        off = unwrapped.disable_adapter() if self.feature_model is None and hasattr(unwrapped, "disable_adapter") else nullcontext()
        layers = E.layer_indices(self.settings.feature_layers, self._causal_lm(features_model).config.get_text_config().num_hidden_layers)
        was_training = features_model.training
        features_model.eval()
        try:
            with torch.no_grad(), off:
                out = features_model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                                     logits_to_keep=1)
        finally:
            features_model.train(was_training)
        states = [out.hidden_states[i].float() for i in layers]
        if each_layer_unit:
            states = [torch.nn.functional.normalize(s, dim=-1) for s in states]
        return torch.cat(states, dim=-1)

    def _token_logps(self, model: Any, ids: Any, mask: Any, rows: Any, at: Any, targets: Any, positions: Any = None) -> Any:
        """log π(targets) predicted at positions `at` of `rows`, from one forward of the trained model (the head
        applied to those positions only, a chunk at a time, recomputed in the backward pass)."""
        from ft.train.loss import catch_hidden_states, chunk_size, token_logps

        causal_lm = self._causal_lm(model)
        text = causal_lm.config.get_text_config()
        with catch_hidden_states(causal_lm) as hidden:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        return token_logps(hidden.value[rows, at], targets, causal_lm.get_output_embeddings(),
                           getattr(text, "final_logit_softcapping", None), chunk_size(text.vocab_size))

    def _mask(self, allowed: Any) -> Any:
        """The (1, 1, q, k) mask the model's attention takes: bool for sdpa, additive for eager."""
        import torch

        implementation = self._causal_lm(self.model).config._attn_implementation
        return allowed[None, None] if implementation == "sdpa" else E.additive(allowed, torch.float32)

    def _nothing(self, model: Any) -> Any:
        """A zero loss that reaches every trained weight (a micro batch with nothing to train on)."""
        return sum(p.reshape(-1)[0] * 0 for p in model.parameters() if p.requires_grad)

    # -- structured mode: whole answers per prompt

    def _generate(self, model: Any, prompt: Any, limit: int) -> list[Any]:
        import torch

        t = self.trl or TrlSettings()
        unwrapped = self.accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        sampling = dict(do_sample=True, temperature=t.temperature, top_p=t.top_p, top_k=t.top_k or 0) if t.temperature else dict(
            do_sample=False)
        try:
            with torch.no_grad():
                out = unwrapped.generate(input_ids=prompt[None].expand(t.num_generations, -1),
                                         attention_mask=torch.ones(t.num_generations, len(prompt), dtype=torch.long, device=prompt.device),
                                         max_new_tokens=limit, min_new_tokens=1, eos_token_id=list(self.stop_ids),
                                         pad_token_id=self.pad_id, repetition_penalty=1.0, use_cache=True, **sampling)
        finally:
            unwrapped.train(was_training)
        samples = []
        for row in out[:, len(prompt):]:
            stops = torch.isin(row, torch.tensor(self.stop_ids, device=row.device)).nonzero()
            samples.append(row[: int(stops[0]) + 1] if len(stops) else row)
        return samples

    def _structured(self, model: Any, rows: list[tuple[Any, Any, int]]) -> tuple[Any, dict[str, float]]:
        import torch

        e, t = self.settings, self.trl or TrlSettings()
        if not rows:
            return self._nothing(model), {}
        groups = []  # (prompt, answer, samples)
        for ids, _, p in rows:
            prompt, answer = ids[:p], ids[p:]
            limit = t.max_completion_length
            if e.adaptive_max_tokens:
                limit = min(limit, max(1, math.ceil(len(answer) * e.gt_length_multiplier)))
            groups.append((prompt, answer, self._generate(model, prompt, limit)))
        stop = torch.tensor(self.stop_ids, device=rows[0][0].device)
        scored = []
        for prompt, answer, samples in groups:
            texts = [torch.cat([prompt, _without_stops(s, stop)]) for s in samples] + [torch.cat([prompt, answer])]
            ids, mask = _right_padded(texts, self.pad_id)
            pooled = E.pool(self._features(model, ids, mask), e.embed_method, mask,
                            torch.full((len(texts),), len(prompt), device=ids.device))
            gen, gt = pooled[:-1], pooled[-1]
            if e.use_whitening:
                gen, gt = E.whiten(gen, gt[None])
                gt = gt[0]
            else:
                gen, gt = torch.nn.functional.normalize(gen, dim=-1), torch.nn.functional.normalize(gt, dim=-1)
            scored.append(E.rewards(gen, gt, e.alignment_coef, e.diversity_coef))
        reward = torch.stack([s["reward"] for s in scored])  # (prompts, samples)
        advantage = E.advantages(reward, "grpo_scaled" if t.scale_rewards else "grpo")

        # one forward of the trained model over every sample (and answer, with ce_coef) of the micro batch
        texts, spans = [], []
        for g, (prompt, answer, samples) in enumerate(groups):
            for j, s in enumerate(samples):
                texts.append(torch.cat([prompt, s]))
                spans.append((len(prompt), len(s), g, j))
            if e.ce_coef:
                texts.append(torch.cat([prompt, answer]))
                spans.append((len(prompt), len(answer), g, -1))
        ids, mask = _right_padded(texts, self.pad_id)
        row_of, at, targets, weight, is_sample = [], [], [], [], []
        for r, (p, n, g, j) in enumerate(spans):
            row_of += [r] * n
            at += range(p - 1, p + n - 1)
            targets.append(ids[r, p:p + n])
            weight += [float(advantage[g, j]) if j >= 0 else 0.0] * n
            is_sample += [j >= 0] * n
        device = ids.device
        logps = self._token_logps(model, ids, mask, torch.tensor(row_of, device=device), torch.tensor(at, device=device),
                                  torch.cat(targets))
        a = torch.tensor(weight, device=device)
        sample = torch.tensor(is_sample, device=device)
        ratio = torch.exp(logps - logps.detach())
        low, high = t.epsilon, t.epsilon_high or t.epsilon
        per_token = -torch.minimum(ratio * a, ratio.clamp(1 - low, 1 + high) * a)
        owner = torch.tensor(row_of, device=device)
        sample_rows = [r for r, s in enumerate(spans) if s[3] >= 0]
        if t.loss_type == "grpo":
            sums = per_token.new_zeros(len(spans)).index_add(0, owner, per_token * sample)
            lengths = torch.tensor([s[1] for s in spans], device=device, dtype=sums.dtype)
            rl = (sums / lengths)[sample_rows].mean()
        elif t.loss_type == "dapo":
            rl = (per_token * sample).sum() / sample.sum()
        else:  # dr_grpo
            rl = (per_token * sample).sum() / (len(sample_rows) * t.max_completion_length)
        loss = e.rl_coef * rl
        if e.ce_coef:
            answers = ~sample
            loss = loss + e.ce_coef * -(logps * answers).sum() / answers.sum()
        sampled = sum(len(s) for _, _, samples in groups for s in samples) / sum(len(s) for _, _, s in groups)
        return loss, _metrics(scored, advantage, sampled)

    # -- strided mode: short rollouts at anchors through each text

    def _rollouts(self, model: Any, ids: Any, starts: list[int]) -> Any:
        """(n, steps·nb): n rollouts of generate_max_len tokens at each anchor, sampled step by step over the
        strided layout from the model as it is (adapter on), without gradients."""
        import torch

        e = self.settings
        unwrapped = self.accelerator.unwrap_model(model)
        length, nb, n = len(ids), len(starts), e.n_samples_per_prompt
        before = E.predictors(length, starts, e.generate_max_len, ids.device)
        sampled = ids.new_zeros(n, 0)
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            with torch.no_grad():
                for step in range(e.generate_max_len):
                    total = length + step * nb
                    allowed, positions = E.strided_layout(length, starts, step, total, ids.device)
                    seq = torch.cat([ids[None].expand(n, -1), sampled], dim=1)
                    logits = unwrapped(input_ids=seq, attention_mask=self._mask(allowed).expand(n, -1, -1, -1),
                                       position_ids=positions[None].expand(n, -1), logits_to_keep=before[step]).logits
                    sampled = torch.cat([sampled, E.sample(logits, e.temperature, e.top_p)], dim=1)
        finally:
            unwrapped.train(was_training)
        return sampled

    def _strided(self, model: Any, rows: list[tuple[Any, Any, int]]) -> tuple[Any, dict[str, float]]:
        import torch

        e = self.settings
        n, steps = e.n_samples_per_prompt, e.generate_max_len
        estimator = e.advantage_estimator if n > 1 else "reinforce"
        diversity = e.diversity_coef if n > 1 else 0.0
        plans = []
        for ids, labels, p in rows:
            # a row trained from its second token on (BOS not trained) is a text without a prompt
            starts = E.anchors(len(ids), p if p > 1 else 0, e.stride, e.context_length, steps, e.min_completion_prefix)
            if starts:
                plans.append((ids, labels, starts, self._rollouts(model, ids, starts)))
        if not plans:
            return self._nothing(model), {}
        total = max(len(ids) + steps * len(starts) for ids, _, starts, _ in plans)
        device = plans[0][0].device
        seqs, masks, positions = [], [], []
        for ids, _, starts, sampled in plans:
            allowed, where = E.strided_layout(len(ids), starts, steps, total, device)
            for s in sampled:
                seq = torch.cat([ids, s])
                seqs.append(torch.cat([seq, seq.new_full((total - len(seq),), self.pad_id)]))
                masks.append(self._mask(allowed)[0])
                positions.append(where)
        ids_all, mask_all, pos_all = torch.stack(seqs), torch.stack(masks), torch.stack(positions)

        # rewards from the frozen features over the same layout
        features = self._features(model, ids_all, mask_all, pos_all, each_layer_unit=True)
        scored, advantages = [], []
        row = 0
        for ids, _, starts, _ in plans:
            nb, length = len(starts), len(ids)
            f = features[row:row + n]
            start = torch.tensor(starts, device=device)
            answer_at = start[:, None] + torch.arange(steps, device=device)[None]  # (nb, steps)
            sample_at = length + torch.arange(steps, device=device)[None] * nb + torch.arange(nb, device=device)[:, None]
            if e.embed_method == "last_token":
                gt, gen = f[0, answer_at[:, -1]], f[:, sample_at[:, -1]].transpose(0, 1)  # (nb, D), (nb, n, D)
            else:
                gt, gen = f[0, answer_at].mean(dim=1), f[:, sample_at].mean(dim=2).transpose(0, 1)
            if e.use_whitening:
                pairs = [E.whiten(gen[b], gt[b][None]) for b in range(nb)]
                gen, gt = torch.stack([g for g, _ in pairs]), torch.cat([a for _, a in pairs])
            r = E.rewards(gen, gt, e.alignment_coef, diversity)
            scored.append(r)
            advantages.append(E.advantages(r["reward"], estimator).transpose(0, 1))  # (n, nb)
            row += n

        # the trained model's log-probabilities of every sampled token (and of the answers, with ce_coef)
        rows_of, at, targets, weights = [], [], [], []
        ce_rows, ce_at, ce_targets = [], [], []
        row = 0
        for (ids, labels, starts, sampled), adv in zip(plans, advantages):
            nb, length = len(starts), len(ids)
            before = E.predictors(length, starts, steps, device)  # (steps, nb)
            for j in range(n):
                rows_of.append(torch.full((steps * nb,), row + j, device=device))
                at.append(before.reshape(-1))
                targets.append(sampled[j])
                weights.append(adv[j][None].expand(steps, nb).reshape(-1))
            if e.ce_coef:
                trained = (labels[1:] != IGNORE).nonzero()[:, 0]
                ce_rows.append(torch.full_like(trained, row))
                ce_at.append(trained)
                ce_targets.append(ids[trained + 1])
            row += n
        count = sum(len(t) for t in targets)
        logps = self._token_logps(model, ids_all, mask_all, torch.cat(rows_of + ce_rows), torch.cat(at + ce_at),
                                  torch.cat(targets + ce_targets), pos_all)
        rl = -(logps[:count] * torch.cat(weights)).sum() / count
        loss = e.rl_coef * rl
        if e.ce_coef and len(logps) > count:
            loss = loss + e.ce_coef * -logps[count:].mean()
        return loss, _metrics(scored, torch.cat([a.reshape(-1) for a in advantages]), float(steps))


def _metrics(scored: list[dict[str, Any]], advantage: Any, sampled: float) -> dict[str, float]:
    import torch

    def mean(key: str) -> float:
        return float(torch.cat([s[key].reshape(-1) for s in scored]).mean())

    return {"ebft/reward": mean("reward"), "ebft/alignment": mean("alignment"), "ebft/diversity": mean("diversity"),
            "ebft/cfm_loss": mean("cfm"), "ebft/advantage_std": float(advantage.float().std()) if advantage.numel() > 1 else 0.0,
            "ebft/sampled_tokens": sampled}


def _without_stops(sample: Any, stop: Any) -> Any:
    """A sample as its text reads: the stop token that ended it left out (as vLLM's text leaves it out)."""
    import torch

    return sample[:-1] if len(sample) > 1 and bool(torch.isin(sample[-1], stop)) else sample


def _right_padded(texts: list[Any], pad_id: int) -> tuple[Any, Any]:
    import torch

    longest = max(len(t) for t in texts)
    ids = texts[0].new_full((len(texts), longest), pad_id)
    mask = torch.zeros(len(texts), longest, dtype=torch.long, device=ids.device)
    for i, t in enumerate(texts):
        ids[i, :len(t)] = t
        mask[i, :len(t)] = 1
    return ids, mask


def configure(trainer: EbftTrainer, online: Any, model: Any, tokenizer: Any, full: bool) -> str:
    """Give the trainer its settings, stop tokens and features model (a frozen copy for full fine-tuning, taken
    before the first step); strided mode's layout needs an attention that takes a 4-D mask (sdpa, eager).
    Returns what the run does, in words."""
    import copy

    from ft.train.loss import causal_lm_of

    e, t = online.ebft or EbftSettings(), online.trl
    trainer.settings, trainer.trl, trainer.pad_id = e, t, tokenizer.pad_token_id
    extra = t.generation_kwargs.stop_token_ids if t is not None and t.generation_kwargs else ()
    trainer.stop_ids = tuple(dict.fromkeys(i for i in (tokenizer.eos_token_id, *extra) if i is not None))
    if full:
        trainer.feature_model = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model)).eval().requires_grad_(False)
    switched = []
    if e.mode == "strided":
        for m in (model, trainer.feature_model):
            causal_lm = causal_lm_of(m) if m is not None else None
            if causal_lm is not None and causal_lm.config._attn_implementation not in ("sdpa", "eager"):
                switched.append(causal_lm.config._attn_implementation)
                causal_lm.set_attn_implementation("sdpa")
    where = "a frozen copy of the model" if full else "the model with its adapter off"
    layers = ", ".join(f"{f:g}" for f in e.feature_layers)
    said = [f"EBFT ({e.mode}): features of the layers at {layers} of the depth ({e.embed_method}) from {where}; reward "
            f"{e.alignment_coef:g}·2cos(sample, answer) − {e.diversity_coef:g}·2·similarity to the other samples"]
    if e.mode == "strided":
        said.append(f"{e.n_samples_per_prompt} rollouts of {e.generate_max_len} tokens every {e.stride} tokens of each "
                    f"text, advantages by {e.advantage_estimator}")
    else:
        tt = t or TrlSettings()
        said.append(f"{tt.num_generations} samples of at most {tt.max_completion_length} tokens per prompt (each row of a "
                    f"micro batch is a prompt), {tt.loss_type} loss")
        if tt.use_vllm:
            said.append("trl.use_vllm: ft samples with the trained model in the training process (no vLLM server)")
        if tt.server_keys():
            said.append("ignored (vLLM server and asynchronous sampling): " + ", ".join(tt.server_keys()))
    if e.ce_coef:
        said.append(f"plus {e.ce_coef:g} × the answers' cross-entropy")
    if switched:
        said.append(f"attention {switched[0]} → sdpa (the strided layout is a 4-D mask)")
    return "; ".join(said)
