"""Preference training (`rl:`): DPO, IPO, ORPO and SimPO on padding-free pair batches.

A micro batch of B pairs is one sequence of 2B rows laid end to end (chosen, rejected, chosen, ...), each row
attending only to itself (ft.model.packed_attention), as packed supervised batches are. Each answer's
log-probability is summed from the decoder's final hidden states a chunk of positions at a time (the chunk's
logits recomputed in the backward pass), so the batch's logits never exist whole. The prompt carries no weight:
its labels are ignored. The reference (dpo, ipo) is the same model with its adapter switched off (LoRA,
QLoRA: no second copy in memory), the continued adapter's frozen copy when training continues one
(`lora_model_dir`), or a frozen copy of the model for full fine-tuning.

The losses, per pair, from the summed log-probabilities π of the trained model and ρ of the reference, and
the averages per answer token (π̄):
- dpo: −(1−ε)·log σ(β·((π_c−ρ_c) − (π_r−ρ_r))) − ε·log σ(−β·(...)), ε = dpo_label_smoothing (Rafailov et al.)
- ipo: ((π̄_c−ρ̄_c) − (π̄_r−ρ̄_r) − 1/(2β))² (Azar et al.; averages per token, as TRL's)
- simpo: −log σ(β·(π̄_c − π̄_r) − γ) (Meng et al.)
- orpo: −π̄_c − λ·log σ(log odds(π̄_c) − log odds(π̄_r)), odds(p) = p/(1−p) (Hong et al.)
Rewards: β·(π−ρ) with a reference, β·π̄ without; accuracy is the share of pairs whose chosen reward is higher.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

from ft.config.preference import PreferenceConfig
from ft.data.labels import IGNORE
from ft.model.adapter import REFERENCE
from ft.train.batches import DESIRABLE, PAIRS, REAL_TOKENS
from ft.train.trainer import MeanLossTrainer

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")


def sequence_index(inputs: dict[str, Any], labels: Any) -> tuple[Any, int]:
    """For each position of the batch, the sequence (answer) it belongs to, and how many there are: from the
    row edges of a flattened batch, else one sequence per row of a padded batch."""
    import torch

    cu = inputs.get("cu_seq_lens_q")
    if cu is not None and labels.shape[0] == 1:
        lengths = (cu[1:] - cu[:-1]).to(labels.device)
        index = torch.repeat_interleave(torch.arange(len(lengths), device=labels.device), lengths)
        return index[None, : labels.shape[1]], len(lengths)
    rows = labels.shape[0]
    return torch.arange(rows, device=labels.device)[:, None].expand_as(labels), rows


def answer_logps(labels: Any, index: Any, count: int, *, hidden: Any = None, head: Any = None, logits: Any = None,
                 softcap: Optional[float] = None, chunk: int = 1024) -> tuple[Any, Any]:
    """(sum of log-probabilities, trained tokens) of each sequence's labels, from the final hidden states and
    the head (a chunk at a time, recomputed in the backward pass) or from whole logits."""
    import torch

    targets = labels[:, 1:].reshape(-1)
    owner = index[:, 1:].reshape(-1)
    trained = targets != IGNORE
    targets, owner = targets[trained], owner[trained]
    if logits is not None:
        states = logits[:, :-1].reshape(-1, logits.shape[-1])[trained].float()
        token = torch.log_softmax(states, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    else:
        from ft.train.loss import token_logps

        token = token_logps(hidden[:, :-1].reshape(-1, hidden.shape[-1])[trained], targets, head, softcap, chunk)
    sums = token.new_zeros(count).index_add(0, owner, token)
    tokens = torch.bincount(owner, minlength=count).to(sums.dtype)
    return sums, tokens


def preference_loss(p: PreferenceConfig, policy: tuple[Any, Any], reference: Optional[tuple[Any, Any]]) -> tuple[Any, dict[str, Any]]:
    """The mean loss over the batch's pairs and the metrics (means over pairs), from (sums, tokens) of the
    answers in batch order: chosen at even places, rejected at odd."""
    import torch
    import torch.nn.functional as F

    sums, tokens = policy
    mean = sums / tokens.clamp(min=1)
    chosen, rejected = sums[0::2], sums[1::2]
    chosen_mean, rejected_mean = mean[0::2], mean[1::2]
    beta = p.rl_beta
    if p.rl in ("dpo", "ipo"):
        assert reference is not None
        ref_sums, ref_tokens = reference
        ref_mean = ref_sums / ref_tokens.clamp(min=1)
        if p.rl == "dpo":
            logits = beta * ((chosen - ref_sums[0::2]) - (rejected - ref_sums[1::2]))
            eps = p.dpo_label_smoothing
            losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        else:
            h = (chosen_mean - ref_mean[0::2]) - (rejected_mean - ref_mean[1::2])
            losses = (h - 1 / (2 * beta)) ** 2
        reward_c, reward_r = beta * (chosen - ref_sums[0::2]).detach(), beta * (rejected - ref_sums[1::2]).detach()
    elif p.rl == "simpo":
        losses = -F.logsigmoid(beta * (chosen_mean - rejected_mean) - p.simpo_gamma)
        reward_c, reward_r = beta * chosen_mean.detach(), beta * rejected_mean.detach()
    else:  # orpo
        def log_odds(m: Any) -> Any:
            return m - torch.log1p(-torch.exp(m).clamp(max=1 - 1e-7))

        losses = -chosen_mean - p.orpo_alpha * F.logsigmoid(log_odds(chosen_mean) - log_odds(rejected_mean))
        reward_c, reward_r = beta * chosen_mean.detach(), beta * rejected_mean.detach()
    metrics = {"rewards/chosen": reward_c.mean(), "rewards/rejected": reward_r.mean(),
               "rewards/margins": (reward_c - reward_r).mean(), "rewards/accuracies": (reward_c > reward_r).float().mean(),
               "logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}
    return losses.mean(), metrics


KTO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "logps/chosen", "logps/rejected")


def kto_loss(p: PreferenceConfig, policy: tuple[Any, Any], reference: tuple[Any, Any], desirable: Any,
             across: Any) -> tuple[Any, dict[str, Any]]:
    """KTO (Ethayarajh et al. 2024, TRL's KTOTrainer): each pair is a row's own text (even places) and the text of
    its prompt with another row's answer (odd places). z = max(0, mean over the batch, and over processes by
    `across`, of log π − log ρ of the mismatched texts), held constant; with r = log π − log ρ of the own text,
    a desirable answer costs λ_D·(1 − σ(β(r − z))), an undesirable one λ_U·(1 − σ(β(z − r))); the loss is their
    mean over the batch's rows."""
    import torch

    sums, ref = policy[0], reference[0]
    ratio, mismatched = sums[0::2] - ref[0::2], (sums[1::2] - ref[1::2]).detach()
    z = across(mismatched.mean()).clamp(min=0)
    good = desirable.to(ratio.device).bool()
    beta = p.rl_beta
    losses = torch.where(good, p.kto_desirable_weight * (1 - torch.sigmoid(beta * (ratio - z))),
                         p.kto_undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio))))
    reward = beta * ratio.detach()
    nan = torch.tensor(float("nan"), device=ratio.device)

    def mean(values: Any, where: Any) -> Any:
        return values[where].mean() if bool(where.any()) else nan

    chosen, rejected = mean(reward, good), mean(reward, ~good)
    metrics = {"rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected, "kl": z,
               "logps/chosen": mean(sums[0::2].detach(), good), "logps/rejected": mean(sums[0::2].detach(), ~good)}
    return losses.mean(), metrics


class PreferenceTrainer(MeanLossTrainer):
    """FtTrainer whose loss compares each pair's answers (module docstring). `reference_model`: a frozen copy
    for full fine-tuning; with an adapter the reference is the model with the adapter off."""

    preference: PreferenceConfig
    reference_model: Any = None
    reference_store: Any = None  # ft.train.reference.ReferenceStore when precompute_ref_log_probs
    logits_from_model = False  # the whole logits instead of the chunked head (FSDP, ZeRO-3: the head is gathered only inside the forward)
    metric_names = METRICS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._precomputed: dict[str, Any] = {}

    def _answers(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        from ft.train.loss import catch_hidden_states, causal_lm_of, chunk_size

        labels = inputs["labels"]
        rest = {k: v for k, v in inputs.items() if k not in ("labels", REAL_TOKENS, PAIRS, DESIRABLE)}
        causal_lm = causal_lm_of(self.accelerator.unwrap_model(model))
        text = causal_lm.config.get_text_config()
        softcap = getattr(text, "final_logit_softcapping", None)
        index, count = sequence_index(inputs, labels)
        if self.logits_from_model:
            logits = model(**rest).logits
            return answer_logps(labels, index, count, logits=logits, softcap=None)
        with catch_hidden_states(causal_lm) as hidden:
            model(**rest, logits_to_keep=1)
        return answer_logps(labels, index, count, hidden=hidden.value, head=causal_lm.get_output_embeddings(),
                            softcap=softcap, chunk=chunk_size(text.vocab_size))

    def _reference(self, model: Any, inputs: dict[str, Any], live: bool = False) -> Optional[tuple[Any, Any]]:
        import torch

        if not self.preference.reference:
            return None
        if live and self.reference_model is None and not self._has_adapter(model):
            with torch.no_grad():  # full fine-tuning before its first step: the model is its own reference
                return self._answers(model, inputs)
        with torch.no_grad():
            if self.reference_model is not None:
                return self._answers(self.reference_model, inputs)
            unwrapped = self.accelerator.unwrap_model(model)
            if REFERENCE in getattr(unwrapped, "peft_config", {}):  # a continued adapter: its frozen copy
                active = unwrapped.active_adapter
                unwrapped.set_adapter(REFERENCE, inference_mode=True)
                try:
                    return self._answers(model, inputs)
                finally:
                    unwrapped.set_adapter(active)  # trainable again, the copy frozen
            with unwrapped.disable_adapter() if hasattr(unwrapped, "disable_adapter") else nullcontext():
                return self._answers(model, inputs)

    def _precomputed_reference(self, model: Any, inputs: dict[str, Any], split: str) -> tuple[Any, Any]:
        """The reference values of this batch's answers from the values computed once for the whole split."""
        import torch

        if split not in self._precomputed:
            import logging
            import time

            values = self.reference_store.load(split)
            where = self.reference_store.path(split)
            if values is None:
                started = time.perf_counter()
                values = self._compute_reference(model, split)
                logging.getLogger("ft").info("reference log-probabilities of %d %s answers computed in %.1f s, kept in %s",
                                             len(values), split, time.perf_counter() - started, where)
            else:
                logging.getLogger("ft").info("reference log-probabilities of %d %s answers found in %s", len(values), split, where)
            self._precomputed[split] = torch.as_tensor(values)
        values = self._precomputed[split]
        rows = torch.stack([2 * inputs[PAIRS], 2 * inputs[PAIRS] + 1], dim=1).reshape(-1).cpu()
        picked = values[rows].to(inputs["labels"].device, torch.float32)
        return picked[:, 0], picked[:, 1]

    def _compute_reference(self, model: Any, split: str) -> Any:
        """The reference's (log-probability, tokens) of every answer of a split, in table order: every process
        runs every batch (under ZeRO-3 or FSDP each forward is a collective), the first one keeps the file."""
        import numpy as np

        from ft.errors import UserError

        if self.state.global_step > 0 and self.reference_model is None and not self._has_adapter(model):
            raise UserError("the precomputed reference log-probabilities of this run are not in the cache, and the model has "
                            "trained since it was the reference; start the run again from the beginning (or set "
                            "precompute_ref_log_probs: false)")
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        values = np.zeros((2 * len(dataset), 2))
        size = self.args.per_device_train_batch_size
        was_training = model.training
        model.eval()
        for start in range(0, len(dataset), size):
            batch = self._prepare_inputs(self.data_collator([dataset[i] for i in range(start, min(start + size, len(dataset)))]))
            batch.pop(REAL_TOKENS, None)
            sums, tokens = self._reference(model, batch, live=True)
            values[2 * start: 2 * start + len(sums), 0] = sums.float().cpu().numpy()
            values[2 * start: 2 * start + len(sums), 1] = tokens.float().cpu().numpy()
        model.train(was_training)
        if self.args.should_save:
            self.reference_store.save(split, values)
        return values

    def _has_adapter(self, model: Any) -> bool:
        return hasattr(self.accelerator.unwrap_model(model), "peft_config")

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        split = "train" if model.training else "eval"
        if self.reference_store is not None and self.preference.reference:
            reference = self._precomputed_reference(model, inputs, split)
        else:
            reference = self._reference(model, inputs)
        if self.preference.rl == "kto":
            assert reference is not None
            loss, metrics = kto_loss(self.preference, self._answers(model, inputs), reference, inputs[DESIRABLE],
                                     lambda value: self.accelerator.reduce(value, reduction="mean"))
        else:
            loss, metrics = preference_loss(self.preference, self._answers(model, inputs), reference)
        self._keep(split, metrics)
        return (loss, {"loss": loss}) if return_outputs else loss

