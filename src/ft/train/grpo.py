"""`rl: grpo` and `rl: gdpo`: the Trainer that samples answers to each prompt, scores them with the user's reward
functions and trains on the advantages, with TRL's GRPO loss.

Each row of a micro batch is a prompt (a Python transform's, ft.data.formats.python) with the columns its reward
functions read. `trl.num_generations` answers are sampled per prompt (`generate`, the model as it is, in eval
mode); every reward function is called as TRL calls it, f(prompts=, completions=, completion_ids=, **columns) → a
number per answer (None: no reward from that function). The rewards become advantages:

- sum_then_normalize (GRPO): r = Σ_k w_k r_k; A = (r − mean of the prompt's group) / (its std + 1e-4) (without the
  division when trl.scale_rewards is false);
- normalize_then_sum (GDPO, `rl: gdpo`'s default): each r_k normalized in its group first, (r_k − mean_k) /
  (std_k + 1e-4); r = Σ_k w_k of those; A = (r − mean) / (std + 1e-4) over the batch (every process's samples).

The loss is GRPO's over the sampled tokens: −min(ρA, clip(ρ, 1−ε, 1+ε_high)A) with ρ = π/π_sampled (1 on the step
that samples, so its gradient is −A·∇log π), plus β × the per-token KL estimate exp(q−p) − (q−p) − 1 against the
reference q (the model with its adapter off, or a frozen copy taken before the first step), aggregated by
trl.loss_type as TRL does."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from ft.config.online import TrlSettings
from ft.train.batches import REAL_TOKENS, REWARDS_READ
from ft.train.ebft_trainer import EbftTrainer, _right_padded, _without_stops

log = logging.getLogger("ft")


def group_advantages(rewards: Any, weights: Any, aggregation: str, scale: bool, gather: Any = None) -> Any:
    """(prompts, samples) advantages from (prompts, samples, functions) rewards (NaN: none given); `gather` puts
    every process's values together for the batch statistics of normalize_then_sum."""
    if aggregation == "sum_then_normalize":
        total = (rewards * weights).nansum(dim=-1)
        centred = total - total.mean(dim=1, keepdim=True)
        return centred / (total.std(dim=1, keepdim=True) + 1e-4) if scale else centred
    mean = rewards.nanmean(dim=1, keepdim=True)
    count = (~rewards.isnan()).sum(dim=1, keepdim=True)
    var = ((rewards - mean) ** 2).nansum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    total = (((rewards - mean) / (var.sqrt() + 1e-4)) * weights).nansum(dim=-1)
    everything = gather(total.flatten()) if gather is not None else total.flatten()
    return (total - everything.mean()) / (everything.std() + 1e-4)


class GrpoTrainer(EbftTrainer):
    """The Trainer with GRPO's loss over the model's own samples (module docstring)."""

    reward_funcs: tuple[Any, ...] = ()
    reward_names: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    aggregation = "sum_then_normalize"
    reference_model: Any = None  # full fine-tuning with beta: the frozen copy the KL term compares with
    tokenizer: Any = None

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        inputs.pop(REAL_TOKENS, None)
        read = inputs.pop(REWARDS_READ)
        prompts = [ids[: int(mask.sum())] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        loss, metrics = self._grpo(model, prompts, read)
        self._keep("train" if model.training else "eval", metrics)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _rewards(self, read: list[dict[str, Any]], samples: list[list[Any]]) -> Any:
        """(prompts, samples, functions): each function's reward of each sample, NaN where it gave None."""
        import torch

        t = self.trl or TrlSettings()
        stop = torch.tensor(self.stop_ids, device=samples[0][0].device)
        texts = [self.tokenizer.decode(_without_stops(s, stop), skip_special_tokens=True) for group in samples for s in group]
        rows = [row for row in read for _ in range(t.num_generations)]
        conversational = isinstance(rows[0].get("prompt"), list)
        completions = [[{"role": "assistant", "content": x}] for x in texts] if conversational else texts
        columns = {k: [row.get(k) for row in rows] for k in rows[0] if k != "prompt"}
        ids = [s.tolist() for group in samples for s in group]
        scores = []
        for name, func in zip(self.reward_names, self.reward_funcs):
            got = func(prompts=[row.get("prompt") for row in rows], completions=completions, completion_ids=ids, **columns)
            if len(got) != len(texts):
                from ft.errors import UserError

                raise UserError(f"the reward function `{name}` returned {len(got)} rewards for {len(texts)} samples")
            scores.append([float("nan") if r is None else float(r) for r in got])
        device = samples[0][0].device
        out = torch.tensor(scores, device=device, dtype=torch.float32).T.reshape(len(samples), t.num_generations, -1)
        if t.log_completions and self.state.global_step % max(self.args.logging_steps, 1) == 0 and self.args.should_save:
            for text, row in list(zip(texts, out.reshape(len(texts), -1).tolist()))[: t.num_completions_to_print or len(texts)]:
                log.info("sample (rewards %s): %s", ", ".join(f"{n} {r:g}" for n, r in zip(self.reward_names, row)), text[:500])
        return out

    def _reference_logps(self, model: Any, ids: Any, mask: Any, rows: Any, at: Any, targets: Any) -> Any:
        import torch

        unwrapped = self.accelerator.unwrap_model(model)
        if self.reference_model is not None:
            with torch.no_grad():
                return self._token_logps(self.reference_model, ids, mask, rows, at, targets)
        off = unwrapped.disable_adapter() if hasattr(unwrapped, "disable_adapter") else nullcontext()
        with torch.no_grad(), off:
            return self._token_logps(model, ids, mask, rows, at, targets)

    def _grpo(self, model: Any, prompts: list[Any], read: list[dict[str, Any]]) -> tuple[Any, dict[str, float]]:
        import torch

        t = self.trl or TrlSettings()
        samples = [self._generate(model, p, t.max_completion_length) for p in prompts]
        rewards = self._rewards(read, samples)
        weights = torch.tensor(self.weights, device=rewards.device)
        advantage = group_advantages(rewards, weights, self.aggregation, t.scale_rewards,
                                     self.accelerator.gather if self.accelerator.num_processes > 1 else None)
        texts, spans = [], []
        for g, (prompt, group) in enumerate(zip(prompts, samples)):
            for j, s in enumerate(group):
                texts.append(torch.cat([prompt, s]))
                spans.append((len(prompt), len(s), g, j))
        ids, mask = _right_padded(texts, self.pad_id)
        row_of, at, targets, weight = [], [], [], []
        for r, (p, n, g, j) in enumerate(spans):
            row_of += [r] * n
            at += range(p - 1, p + n - 1)
            targets.append(ids[r, p:p + n])
            weight += [float(advantage[g, j])] * n
        device = ids.device
        rows_t, at_t, targets_t = (torch.tensor(row_of, device=device), torch.tensor(at, device=device), torch.cat(targets))
        logps = self._token_logps(model, ids, mask, rows_t, at_t, targets_t)
        a = torch.tensor(weight, device=device)
        ratio = torch.exp(logps - logps.detach())
        low, high = t.epsilon, t.epsilon_high or t.epsilon
        per_token = -torch.minimum(ratio * a, ratio.clamp(1 - low, 1 + high) * a)
        kl = None
        if t.beta:
            reference = self._reference_logps(model, ids, mask, rows_t, at_t, targets_t)
            gap = reference - logps
            kl = torch.exp(gap) - gap - 1
            per_token = per_token + t.beta * kl
        owner = rows_t
        if t.loss_type == "grpo":
            sums = per_token.new_zeros(len(spans)).index_add(0, owner, per_token)
            lengths = torch.tensor([s[1] for s in spans], device=device, dtype=sums.dtype)
            loss = (sums / lengths).mean()
        elif t.loss_type == "dapo":
            loss = per_token.mean()
        else:  # dr_grpo
            loss = per_token.sum() / (len(spans) * t.max_completion_length)
        metrics = {"grpo/reward": float((rewards * weights).nansum(dim=-1).mean()),
                   "grpo/advantage_std": float(advantage.std()) if advantage.numel() > 1 else 0.0,
                   "grpo/completion_length": sum(s[1] for s in spans) / len(spans)}
        for k, name in enumerate(self.reward_names):
            metrics[f"grpo/rewards/{name}"] = float(rewards[..., k].nanmean())
        if kl is not None:
            metrics["grpo/kl"] = float(kl.mean())
        return loss, metrics


def configure(trainer: GrpoTrainer, rl: str, online: Any, model: Any, tokenizer: Any, full: bool) -> str:
    """Give the trainer its reward functions (imported), weights, aggregation, stop tokens and reference (a frozen
    copy for full fine-tuning with beta). Returns what the run does, in words."""
    import copy

    from ft.data.formats.python import imported

    t: TrlSettings = online.trl
    trainer.trl, trainer.pad_id, trainer.tokenizer = t, tokenizer.pad_token_id, tokenizer
    extra = t.generation_kwargs.stop_token_ids if t.generation_kwargs else ()
    trainer.stop_ids = tuple(dict.fromkeys(i for i in (tokenizer.eos_token_id, *extra) if i is not None))
    trainer.reward_funcs = tuple(imported(path, "the reward function") for path in t.reward_funcs)
    trainer.reward_names = tuple(path.rpartition(".")[2] for path in t.reward_funcs)
    trainer.weights = tuple(t.reward_weights or (1.0,) * len(t.reward_funcs))
    trainer.aggregation = t.multi_objective_aggregation or ("normalize_then_sum" if rl == "gdpo" else "sum_then_normalize")
    trainer.metric_names = ("grpo/reward", "grpo/advantage_std", "grpo/completion_length", "grpo/kl",
                            *(f"grpo/rewards/{n}" for n in trainer.reward_names))
    if full and t.beta:
        trainer.reference_model = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model)).eval().requires_grad_(False)
    said = [f"{rl.upper()}: {t.num_generations} samples of at most {t.max_completion_length} tokens per prompt, rewarded by "
            + ", ".join(f"{n} (×{w:g})" for n, w in zip(trainer.reward_names, trainer.weights))
            + f", {trainer.aggregation}, {t.loss_type} loss"]
    if t.beta:
        said.append(f"KL × {t.beta:g} against " + ("a frozen copy of the model" if full else "the model with its adapter off"))
    if t.use_vllm:
        said.append("trl.use_vllm: ft samples with the trained model in the training process (no vLLM server)")
    if t.server_keys():
        said.append("ignored (vLLM server and asynchronous sampling): " + ", ".join(t.server_keys()))
    return "; ".join(said)
