"""`activation_offloading`: what the backward pass keeps (with gradient checkpointing: each layer's input)
lives in pinned CPU memory, not on the GPU.

A saved-tensor pack hook copies each large activation to pinned host memory on a side stream, so the copy
overlaps the forward compute (`record_stream` keeps the GPU block from being reused before the copy is
done); the unpack hook has the compute stream wait for that copy and brings the tensor back. Weights
(parameters, and frozen tensors that are no op's output) and small tensors stay where they are, and so does
what a copy could not free: a view (its storage is its base's, which stays: the chunked loss's chunk inputs
are slices of the final hidden states) and autocast's low-precision copy of a weight (autocast caches it for
the whole forward). Those would cost transfer time and pinned memory for no GPU memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

MIN_BYTES = 1 << 20


def _activation(tensor: Any) -> bool:
    """An activation, not a weight: the output of a differentiable op, or a leaf made to require grad that is
    not a parameter (the first layer's input when the embeddings are frozen: enable_input_require_grads)."""
    import torch

    return tensor.grad_fn is not None or (tensor.requires_grad and not isinstance(tensor, torch.nn.Parameter))


def cast_of_parameter(tensor: Any) -> bool:
    """autocast's low-precision copy of a weight: a copy op whose input is a parameter."""
    import torch

    fn = tensor.grad_fn
    return fn is not None and type(fn).__name__.startswith("ToCopyBackward") and any(
        isinstance(getattr(nxt, "variable", None), torch.nn.Parameter) for nxt, _ in fn.next_functions)


def _freeable(tensor: Any) -> bool:
    """Whether moving the tensor off the device can free memory: not a view of another tensor (a linear
    layer saves its cast weight as such a view), and not autocast's cast of a weight."""
    return tensor._base is None and not cast_of_parameter(tensor)


class ActivationOffload:
    """The pack/unpack pair; `devices` are the device types whose tensors move (tests add "cpu" to exercise it)."""

    def __init__(self, devices: tuple[str, ...] = ("cuda",), min_bytes: int = MIN_BYTES) -> None:
        import torch

        self.devices, self.min_bytes = devices, min_bytes
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() and "cuda" in devices else None
        self.moved = 0  # tensors offloaded so far (for the log and the tests)

    def pack(self, tensor: Any) -> Any:
        import torch

        if (tensor.device.type not in self.devices or not _activation(tensor) or not _freeable(tensor)
                or tensor.numel() * tensor.element_size() < self.min_bytes):
            return tensor
        self.moved += 1
        if tensor.device.type != "cuda":
            return ("host", tensor.device, tensor.detach().clone(), None)
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        assert self.stream is not None
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            host.copy_(tensor.detach(), non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        tensor.record_stream(self.stream)
        return ("host", tensor.device, host, done)

    def unpack(self, packed: Any) -> Any:
        import torch

        if not (isinstance(packed, tuple) and packed and packed[0] == "host"):
            return packed
        _, device, host, done = packed
        if done is None:
            return host.to(device)
        torch.cuda.current_stream().wait_event(done)
        return host.to(device, non_blocking=True)

    @contextmanager
    def active(self) -> Iterator[None]:
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield
