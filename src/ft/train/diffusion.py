"""`diffusion:` (config/diffusion.py says what it trains): the masked-diffusion loss over padded or packed batches.

Rows are told apart by their segment: a padded batch's rows, or a packed bin's rows (each starts where its
positions restart). Every row draws its own t; the attention is full within a row (padding attends to itself
only); a masked token at i is predicted by the head at i − 1, which never crosses a row: a row's first token
is not trained, so it is never masked.
"""

from __future__ import annotations

from typing import Any

from ft.config.diffusion import DiffusionSettings
from ft.data.labels import IGNORE
from ft.train.batches import REAL_TOKENS
from ft.train.trainer import MeanLossTrainer

METRICS = ("diffusion/ce", "diffusion/accuracy", "diffusion/mask_ratio")
DEFAULT_MASK = "<|diffusion_mask|>"


def mask_token(tokenizer: Any, s: DiffusionSettings) -> tuple[int, bool]:
    """The mask token's id, and whether it was added to the vocabulary: mask_token_id when the vocabulary has it,
    else mask_token_str (or <|diffusion_mask|>) when the tokenizer has it as a special token, else that text added
    as a special token (Axolotl's order)."""
    size = len(tokenizer)
    if s.mask_token_id is not None and s.mask_token_id < size:
        return s.mask_token_id, False
    text = s.mask_token_str or DEFAULT_MASK
    if text in tokenizer.all_special_tokens:
        return int(tokenizer.convert_tokens_to_ids(text)), False
    tokenizer.add_special_tokens({"additional_special_tokens": [text]})
    return int(tokenizer.convert_tokens_to_ids(text)), True


def segments(inputs: dict[str, Any]) -> Any:
    """(rows, positions) → the row each position belongs to, numbered from 1 across the batch; 0 for padding."""
    import torch

    ids = inputs["input_ids"]
    if "attention_mask" in inputs and inputs["attention_mask"] is not None:
        real = inputs["attention_mask"].bool()
        number = torch.arange(1, ids.shape[0] + 1, device=ids.device)[:, None].expand_as(ids)
        return torch.where(real, number, torch.zeros_like(number))
    starts = (inputs["position_ids"] == 0).long()
    return starts.cumsum(dim=1) + torch.arange(ids.shape[0], device=ids.device)[:, None] * (ids.shape[1] + 1)


class DiffusionTrainer(MeanLossTrainer):
    """The Trainer with the masked-diffusion loss (module docstring)."""

    settings: DiffusionSettings
    mask_id: int = 0
    special_ids: tuple[int, ...] = ()
    metric_names = METRICS

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        import torch

        inputs.pop(REAL_TOKENS, None)
        ids, labels = inputs["input_ids"], inputs["labels"]
        seg = segments(inputs)
        trained = (labels != IGNORE) & (seg > 0) & ~torch.isin(ids, torch.tensor(self.special_ids, device=ids.device))
        rows, owner = torch.unique(seg, return_inverse=True)
        t = torch.rand(len(rows), device=ids.device)  # each row's time, and its tokens' masking probability
        p = ((1 - self.settings.eps) * t + self.settings.eps)[owner]
        masked = (torch.rand(ids.shape, device=ids.device) < p) & trained
        loss = self.masked_loss(model, inputs, masked, p)
        return (loss, {"loss": loss}) if return_outputs else loss

    def masked_loss(self, model: Any, inputs: dict[str, Any], masked: Any, p: Any) -> Any:
        """The loss of a batch whose tokens at `masked` are replaced by the mask token, each drawn with probability
        `p` (module docstring)."""
        import torch

        from ft.train.loss import catch_hidden_states, causal_lm_of, chunk_size, token_logps

        ids, labels = inputs["input_ids"], inputs["labels"]
        seg = segments(inputs)
        trained = (labels != IGNORE) & (seg > 0)  # a row's trained tokens, EOS among them, divide its loss
        rows, owner = torch.unique(seg, return_inverse=True)
        noisy = torch.where(masked, torch.full_like(ids, self.mask_id), ids)
        eye = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
        allowed = ((seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)) | eye
        causal_lm = causal_lm_of(self.accelerator.unwrap_model(model))
        text = causal_lm.config.get_text_config()
        with catch_hidden_states(causal_lm) as hidden:
            model(input_ids=noisy, attention_mask=allowed[:, None], position_ids=inputs.get("position_ids"), logits_to_keep=1)
        b, i = masked.nonzero(as_tuple=True)
        if not len(b):  # nothing masked: a zero loss that reaches every trained weight
            return sum(q.reshape(-1)[0] * 0 for q in model.parameters() if q.requires_grad)
        states, targets = hidden.value[b, i - 1], ids[b, i]
        head, chunk = causal_lm.get_output_embeddings(), chunk_size(text.vocab_size)
        softcap = getattr(text, "final_logit_softcapping", None)
        spans = range(0, len(targets), chunk)
        logps = token_logps(states, targets, head, softcap, chunk)
        token = -logps / (p[b, i] if self.settings.importance_weighting else 1.0)
        per_row = token.new_zeros(len(rows)).index_add(0, owner[b, i], token)
        lengths = torch.bincount(owner[trained], minlength=len(rows)).to(per_row.dtype)
        counted = lengths > 0
        with torch.no_grad():
            right = sum(int((head(states[a:a + chunk]).argmax(dim=-1) == targets[a:a + chunk]).sum()) for a in spans)
        self._keep("train" if model.training else "eval", {
            "diffusion/ce": float(-logps.detach().mean()), "diffusion/accuracy": right / len(targets),
            "diffusion/mask_ratio": float(masked.sum() / trained.sum().clamp(min=1))})
        return (per_row[counted] / lengths[counted]).mean()


def configure(trainer: DiffusionTrainer, settings: DiffusionSettings, mask_id: int, tokenizer: Any) -> None:
    """The settings, the mask token and the tokens never masked (BOS, EOS, padding)."""
    trainer.settings, trainer.mask_id = settings, mask_id
    trainer.special_ids = tuple(sorted(i for i in {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
                                       if i is not None))
