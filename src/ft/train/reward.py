"""`reward_model: true`: a Bradley-Terry reward model trained on preference pairs (TRL's RewardTrainer, Axolotl's
reward_model).

The model is the decoder with a one-number head (AutoModelForSequenceClassification, num_labels 1) read at each
text's last token. A micro batch of B pairs is 2B padded rows (chosen, rejected, chosen, ...). Per pair, with
r_c and r_r the scores of the chosen and the rejected text:
    loss = −log σ(r_c − r_r) + c · (r_c + r_r)²,   c = center_rewards_coefficient (0 unless set)
averaged over the pairs; accuracy is the share of pairs with r_c > r_r.
"""

from __future__ import annotations

from typing import Any

from ft.train.batches import PAIRS, REAL_TOKENS
from ft.train.preference import PreferenceTrainer

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def reward_loss(chosen: Any, rejected: Any, center: float) -> tuple[Any, dict[str, Any]]:
    """The mean Bradley-Terry loss of pairs' scores (module docstring), and the metrics logged with it."""
    import torch.nn.functional as F

    loss = -F.logsigmoid(chosen - rejected)
    if center:
        loss = loss + center * (chosen + rejected) ** 2
    margin = (chosen - rejected).detach()
    metrics = {"rewards/chosen": chosen.detach().mean(), "rewards/rejected": rejected.detach().mean(),
               "rewards/margins": margin.mean(), "rewards/accuracies": (margin > 0).float().mean()}
    return loss.mean(), metrics


class RewardTrainer(PreferenceTrainer):
    """PreferenceTrainer's batches and logging, with the reward model's own loss and no reference."""

    center_rewards = 0.0
    metric_names = METRICS

    def scores(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        """The chosen and the rejected texts' scores of a batch of pairs."""
        rows = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        scores = model(**rows).logits[:, 0].float()
        return scores[0::2], scores[1::2]

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        inputs.pop(PAIRS, None)
        inputs.pop(REAL_TOKENS, None)
        loss, metrics = reward_loss(*self.scores(model, inputs), self.center_rewards)
        self._keep("train" if model.training else "eval", metrics)
        return (loss, {"loss": loss}) if return_outputs else loss
