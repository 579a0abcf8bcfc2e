"""Context parallelism (`context_parallel_size: C`, Axolotl's key; all-gather context parallelism, as Llama 3 was
trained): the processes form groups of C, and each group trains its micro batches as one sequence split C ways, so
a process holds the activations of 1/C of the tokens.

The data loaders are dealt over the groups (`deal_batches`): the C processes of a group draw the same micro
batches. Per micro batch (`split`) each lays it out flat (rows end to end, padding dropped; a document per row, or
per packed sequence as its position ids restart), shifts the labels as the unsplit loss would, pads to a multiple
of C and keeps its C-th slice: input ids, position ids (each document's own, so rotary embeddings are the unsplit
sequence's) and shifted labels. In every
attention layer (`attention`, registered in transformers' AttentionInterface), each process gathers the keys and
values of its group (the gradient of each slice summed back to the process that made it) and attends from its
queries to every key of the same document at or before the query (and within a sliding window, when the layer
has one). The loss sums the slice's token losses over the batch's trained tokens (counted once per group),
so the gradients summed over the processes are those of the unsplit batches.

The slice's queries run as a varlen batch (`segments`): each run of one document's queries against that document's
keys up to the run's end, through torch's varlen flash kernel on a GPU (no mask is built) and sdpa run by run
elsewhere (ft.model.packed_attention.attend). Layers other than attention that read the whole sequence (Mamba,
linear attention) cannot be split: such models are refused."""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

from ft.data.labels import IGNORE
from ft.errors import UserError

log = logging.getLogger("ft")

NAME = "ft_context_parallel"
STATE: dict[str, Any] = {}  # the batch being trained: its group, documents and this process's slice (see split)
# layers that run along the whole sequence, which a split sequence would cut (by class name)
SEQUENTIAL = ("Mamba", "GatedDeltaNet", "LinearAttention", "Recurrent", "RWKV", "SSM")


def _gather(x: Any, group: Any, first: int, end: int) -> Any:
    """The keys (or values) `x`, (1, heads, slice, dim), of the group's slices end to end, tokens [first, end) of
    them, as (tokens, heads, dim): what this slice's queries reach. The gradient of every process's part is summed
    back to the process that gave it (`Gather`): one whole-sequence buffer in the backward pass, freed once this
    process's part is taken."""
    return _gather_function().apply(x, group, first, end)


@functools.lru_cache(maxsize=None)
def _gather_function() -> Any:
    import torch
    import torch.distributed as dist

    class Gather(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, part: Any, group: Any, first: int, end: int) -> Any:  # noqa: ANN401
            ctx.group, ctx.first, ctx.end = group, first, end
            part = part[0].transpose(0, 1).contiguous()  # (slice, heads, dim)
            ctx.size = part.shape[0]
            parts = [torch.empty_like(part) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, part, group=group)
            return torch.cat(parts)[first:end].clone()  # not a view: the whole sequence's is freed here

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:  # noqa: ANN401
            size, rank = ctx.size, dist.get_rank(ctx.group)
            whole = grad.new_zeros((size * dist.get_world_size(ctx.group), *grad.shape[1:]))
            whole[ctx.first:ctx.end] = grad
            del grad
            dist.all_reduce(whole, group=ctx.group)  # every process's gradient of every part (gloo has no reduce-scatter)
            mine = whole[rank * size:(rank + 1) * size].clone()
            return mine.transpose(0, 1)[None], None, None, None

    return Gather


def segments(docs: list[int], start: int, size: int) -> tuple[list[int], list[int], int]:
    """A slice's attention as rows of a varlen batch: the slice [start, start + size) of a flat sequence whose tokens
    belong to the documents `docs` (in order; the padding at the end, -1, one more) cut where its documents change.
    Each run of queries attends to its document's keys from the document's first token up to the run's end, so the
    runs' keys lie end to end from the first run's document start: (query boundaries within the slice, key
    boundaries from that first key, the first key's index in the sequence). Every query is its run's last keys' (a
    causal mask aligned to the bottom right)."""
    end = start + size
    first = start
    while first > 0 and docs[first - 1] == docs[start]:
        first -= 1
    cu_q, cu_k = [0], [0]
    for i in range(start + 1, end + 1):
        if i == end or docs[i] != docs[i - 1]:
            cu_q.append(i - start)
            cu_k.append(i - first)
    return cu_q, cu_k, first


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: Optional[float] = None,
              dropout: float = 0.0, sliding_window: Optional[int] = None, **kwargs: Any) -> tuple[Any, None]:
    """(1, heads, slice, dim) queries against their documents' keys in the group's whole sequence (`segments`), as a
    varlen batch: torch's varlen flash kernel on a GPU, sdpa run by run elsewhere (ft.model.packed_attention.attend)."""
    from ft.model.packed_attention import GROUPED_BACKWARD, attend

    group, first = STATE["group"], STATE["first"]
    length, dim = query.shape[2], query.shape[3]
    end = STATE["start"] + length
    q = query[0].transpose(0, 1).contiguous()  # (slice, heads, dim), as the kernels take it
    k, v = _gather(key, group, first, end), _gather(value, group, first, end)  # the keys its documents reach
    cu_q, cu_k = STATE["cu_q"], STATE["cu_k"]
    if q.is_cuda:
        cu_q, cu_k = STATE["cu_q_device"], STATE["cu_k_device"]
    scale = scaling or getattr(module, "scaling", None) or dim**-0.5
    out = attend(q, k, v, cu_q, STATE["longest_q"], scale, sliding_window or None, dropout, cu_k, STATE["longest_k"],
                 grouped=getattr(module, GROUPED_BACKWARD, False))
    return out[None], None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention)


def check_model(model: Any) -> None:
    """Refuse a model whose layers read the whole sequence besides attention, or whose scores are modified."""
    from ft.model.packed_attention import modifies_scores

    for module in model.modules():
        name = type(module).__name__
        if any(word.lower() in name.lower() for word in SEQUENTIAL):
            raise UserError(f"context parallelism splits each sequence over processes, and this model's {name} layers "
                            "run along the whole sequence; remove context_parallel_size")
    config = getattr(model, "config", None)
    if config is not None and modifies_scores(config):
        raise UserError("context parallelism computes attention with the varlen kernels, which cannot soft-cap this "
                        "model's scores; remove context_parallel_size")


class ContextParallel:
    """The groups of `size` processes, and the split of each micro batch (module docstring)."""

    def __init__(self, size: int) -> None:
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
        if world % size:
            raise UserError(f"`context_parallel_size: {size}`, and this run has {world} processes: launch a multiple "
                            f"of {size}")
        self.size, self.index = size, rank % size
        self.group = None
        for first in range(0, world, size):  # every process makes every group, in the same order
            group = dist.new_group(list(range(first, first + size)))
            if first <= rank < first + size:
                self.group = group

    def _flat(self, inputs: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
        """This process's batch as one flat sequence: ids, labels, positions, document numbers (from 0), and the
        stretches the labels shift within as they would unsplit (each row of a padded batch; a packed row whole,
        as its loss shifts over it)."""
        import torch

        ids, labels = inputs["input_ids"], inputs["labels"]
        if "attention_mask" in inputs and inputs["attention_mask"] is not None and ids.shape[0] > 1 or "position_ids" not in inputs:
            mask = inputs.get("attention_mask")
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            rows = [(ids[i][mask[i]], labels[i][mask[i]]) for i in range(ids.shape[0])]
            flat_ids = torch.cat([r[0] for r in rows])
            flat_labels = torch.cat([r[1] for r in rows])
            positions = torch.cat([torch.arange(len(r[0]), device=ids.device) for r in rows])
            docs = torch.cat([torch.full((len(r[0]),), i, device=ids.device) for i, r in enumerate(rows)])
            return flat_ids, flat_labels, positions, docs, docs
        # packed: rows of documents end to end, their positions restarting at 0
        flat_ids, flat_labels, positions = ids.reshape(-1), labels.reshape(-1), inputs["position_ids"].reshape(-1)
        docs = torch.cumsum((positions == 0).long(), 0) - 1
        stretches = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(ids.shape[1])
        return flat_ids, flat_labels, positions, docs, stretches

    def deal_batches(self, accelerator: Any) -> None:
        """The processes of a group draw the same micro batches: the data loaders are dealt over the groups, not the
        processes (accelerate's own preparation, told the number of groups and this group's number)."""
        import torch.distributed as dist
        from accelerate.data_loader import prepare_data_loader

        groups, number = dist.get_world_size() // self.size, dist.get_rank() // self.size

        def prepare(data_loader: Any, device_placement: Any = None, slice_fn_for_dispatch: Any = None) -> Any:
            if getattr(data_loader, "_is_accelerate_prepared", False):
                return data_loader
            prepared = prepare_data_loader(
                data_loader, accelerator.device, num_processes=groups, process_index=number,
                split_batches=accelerator.split_batches, put_on_device=True if device_placement is None else device_placement,
                rng_types=accelerator.rng_types.copy(), dispatch_batches=accelerator.dispatch_batches,
                even_batches=accelerator.even_batches, use_seedable_sampler=accelerator.use_seedable_sampler,
                data_seed=accelerator.dataloader_config.data_seed, non_blocking=accelerator.non_blocking)
            accelerator._dataloaders.append(prepared)
            return prepared

        accelerator.prepare_data_loader = prepare  # this accelerator's, for the Trainer's loaders

    def split(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """This process's slice of its group's micro batch (the same on every process of the group): input ids,
        position ids, labels shifted as the unsplit loss shifts them (the loss takes them as they are); the rest of
        the split is kept in STATE for `attention`."""
        import torch
        import torch.distributed as dist

        ids, labels, positions, docs, stretches = self._flat(inputs)
        mine = torch.tensor([len(ids), int(ids.sum())], device=ids.device)
        seen = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(seen, mine, group=self.group)
        if any(not torch.equal(s, mine) for s in seen):
            raise RuntimeError("the processes of a context-parallel group drew different micro batches")
        pad = -(-len(ids) // self.size) * self.size - len(ids)
        if pad:
            ids, positions = torch.cat([ids, ids.new_zeros(pad)]), torch.cat([positions, positions.new_zeros(pad)])
            labels = torch.cat([labels, labels.new_full((pad,), IGNORE)])
            docs, stretches = torch.cat([docs, docs.new_full((pad,), -1)]), torch.cat([stretches, stretches.new_full((pad,), -1)])
        shifted = torch.full_like(labels, IGNORE)
        same = stretches[1:] == stretches[:-1]
        shifted[:-1] = torch.where(same, labels[1:], torch.full_like(labels[1:], IGNORE))
        size = len(ids) // self.size
        start = self.index * size
        cu_q, cu_k, first = segments(docs.tolist(), start, size)
        STATE.update(group=self.group, start=start, first=first, cu_q=cu_q, cu_k=cu_k,
                     longest_q=max(b - a for a, b in zip(cu_q, cu_q[1:])), longest_k=max(b - a for a, b in zip(cu_k, cu_k[1:])),
                     cu_q_device=torch.tensor(cu_q, dtype=torch.int32, device=ids.device),
                     cu_k_device=torch.tensor(cu_k, dtype=torch.int32, device=ids.device))
        part = slice(start, start + size)
        return {"input_ids": ids[part][None], "position_ids": positions[part][None], "labels": shifted[part][None]}


def enable(trainer: Any, model: Any, size: int, world: int) -> None:
    """Context parallelism for `trainer`: the model's attention, the groups, the data dealt over them."""
    from ft.train.loss import causal_lm_of

    if world % size:
        raise UserError(f"`context_parallel_size: {size}`, and this run has {world} process{'es' if world > 1 else ''}: "
                        f"launch a multiple of {size} (ft train --num-processes {size})")
    causal_lm = causal_lm_of(model)
    check_model(causal_lm)
    if not trainer.model_accepts_loss_kwargs:  # its slices' losses are divided by the whole batch's token count
        raise UserError(f"context parallelism is not supported with {type(causal_lm).__name__}, whose loss does not "
                        "take the batch's token count; remove context_parallel_size")
    register()
    causal_lm.set_attn_implementation(NAME)
    trainer.context_parallel = ContextParallel(size)
    trainer.context_parallel.deal_batches(trainer.accelerator)
    log.info("context parallelism: groups of %d processes, each micro batch split %d ways (keys and values gathered "
             "in every attention layer)", size, size)
