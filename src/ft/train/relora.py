"""ReLoRA (Lialin et al., Axolotl's `relora`): every `jagged_restart_steps` steps each LoRA layer's update is merged
into the weight it sits on, LoRA starts afresh (A random, B zero: its start in every run) and most of its optimizer
state is pruned, so that the run trains a sum of low-rank updates, of higher rank than one LoRA. The learning rate
warms up again after each restart (ft.train.schedulers.jagged).

A 16-bit base takes each update in place. A 4-bit base cannot add a small update to its quantized weight without
losing it; its targeted weights are dequantized once, at the first restart, into a 16-bit copy kept in CPU memory,
which takes every update and is quantized again into the layer. Restarts draw LoRA's new A and the random pruning
from a generator seeded by the run's seed and the restart's number, so every DDP process restarts alike.

The run's output is the whole model, its weights those the last step trained with (`save_whole`): the base with every
update merged, the final LoRA's too, a 4-bit base's weights dequantized. Checkpoints hold the merged weights
(relora.safetensors), which resuming reads back."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

from transformers import TrainerCallback

log = logging.getLogger("ft")

FILE = "relora.safetensors"  # in a checkpoint: the targeted weights with the restarts so far merged
ADAPTER = "default"


def lora_layers(model: Any) -> dict[str, Any]:
    """PEFT's LoRA layers of `model`, by the name of the module they wrap (PEFT's prefixes removed)."""
    from peft.tuners.lora import LoraLayer

    return {_clean(name): module for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and ADAPTER in getattr(module, "lora_A", {})}


def _clean(name: str) -> str:
    for prefix in ("base_model.model.", "module."):
        name = name[len(prefix):] if name.startswith(prefix) else name
    return name


def _is_4bit(layer: Any) -> bool:
    return type(layer.get_base_layer().weight).__name__ == "Params4bit"


def _dequantize(weight: Any) -> Any:
    """A 4-bit weight (Params4bit) back in its 16 bits."""
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)


def _requantize(layer: Any, weight: Any) -> None:
    """`weight` (16 bits, any device) quantized into the 4-bit base layer, as bitsandbytes quantized it at load."""
    import bitsandbytes as bnb

    base = layer.get_base_layer()
    old = base.weight
    new = bnb.nn.Params4bit(weight.to(old.quant_state.dtype).cpu(), requires_grad=False, blocksize=old.blocksize,
                            compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                            quant_storage=old.quant_storage, module=base)
    base.weight = new._quantize(old.device)


class ReLoRA(TrainerCallback):
    def __init__(self, model: Any, period: int, seed: int, prune_method: str, prune_ratio: Optional[float]) -> None:
        self.period, self.seed, self.method = period, seed, prune_method
        self.ratio = prune_ratio if prune_ratio is not None else 0.999 if prune_method == "reset" else 0.9
        self.layers = lora_layers(model)
        self.copies: dict[str, Any] = {}  # a 4-bit base's targeted weights in 16 bits, every update merged (CPU)
        self.restarted_at = 0
        self.resume_from: Optional[Path] = None

    # the restart
    def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        step = state.global_step
        if step and step % self.period == 0 and step != self.restarted_at:
            self.restart(optimizer, step // self.period)
            self.restarted_at = step

    def restart(self, optimizer: Any, number: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + number)
        with torch.no_grad():
            for name, layer in self.layers.items():
                self._merge(name, layer, layer.get_delta_weight(ADAPTER))
                a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                fresh = torch.empty(a.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)  # PEFT's start for A
                a.copy_(fresh)
                b.zero_()
            zeroed, total = self._prune(optimizer, generator)
        log.info("ReLoRA restart %d: LoRA merged into the base and started again; %.1f%% of its optimizer state "
                 "zeroed (%s)", number, 100 * zeroed / max(total, 1), self.method)

    def _merge(self, name: str, layer: Any, delta: Any) -> None:
        if _is_4bit(layer):
            if name not in self.copies:
                self.copies[name] = _dequantize(layer.get_base_layer().weight).cpu()
            self.copies[name] += delta.to(self.copies[name].dtype).cpu()
            _requantize(layer, self.copies[name])
        else:
            weight = layer.get_base_layer().weight
            weight.add_(delta.to(weight.dtype))

    def _prune(self, optimizer: Any, generator: Any) -> tuple[int, int]:
        """Zero `ratio` of each LoRA weight's Adam moments (torch's, or bitsandbytes' 8-bit blocks, dequantized,
        pruned and quantized again)."""
        import torch

        inner = getattr(optimizer, "optimizer", optimizer)
        zeroed = total = 0
        params = [p for layer in self.layers.values() for p in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight)]
        for p in params:
            state = inner.state.get(p, {})
            for key, qmap, absmax in (("exp_avg", None, None), ("exp_avg_sq", None, None),
                                      ("state1", "qmap1", "absmax1"), ("state2", "qmap2", "absmax2")):
                value = state.get(key)
                if not torch.is_tensor(value) or value.dim() == 0:
                    continue
                if value.is_floating_point():
                    self._prune_(value, generator)
                    kept = value
                else:
                    kept = self._prune_8bit(state, key, qmap, absmax, generator)
                zeroed += int((kept == 0).sum())
                total += kept.numel()
        return zeroed, total

    def _prune_(self, value: Any, generator: Any) -> None:
        import torch

        flat = value.detach().float().abs().flatten()
        if self.method == "magnitude":
            k = max(1, min(flat.numel(), int(self.ratio * flat.numel())))
            threshold = torch.kthvalue(flat.cpu(), k).values.to(value.device)
            value.mul_((value.abs() > threshold).to(value.dtype))
        else:
            keep = torch.rand(value.shape, generator=generator) > self.ratio
            value.mul_(keep.to(value.device, value.dtype))

    def _prune_8bit(self, state: dict, key: str, qmap: str, absmax: str, generator: Any) -> Any:
        import bitsandbytes.functional as F

        codes = state[key]
        blocksize = math.ceil(codes.numel() / state[absmax].numel())
        values = F.dequantize_blockwise(codes, absmax=state[absmax], code=state[qmap], blocksize=blocksize)
        self._prune_(values, generator)
        again, quant = F.quantize_blockwise(values, code=state[qmap], blocksize=blocksize)
        codes.copy_(again)
        state[absmax].copy_(quant.absmax)
        return values

    # checkpoints
    def merged(self) -> dict[str, Any]:
        """The targeted weights as merged so far (a 4-bit base's 16-bit copies; none before its first restart)."""
        if self.copies:
            return {f"{name}.weight": w.contiguous() for name, w in self.copies.items()}
        if any(_is_4bit(layer) for layer in self.layers.values()):
            return {}
        return {f"{name}.weight": layer.get_base_layer().weight.detach().cpu().contiguous()
                for name, layer in self.layers.items()}

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        weights = self.merged()
        if weights and self.restarted_at:
            save_file(weights, str(folder / FILE), metadata={"restarted_at": str(self.restarted_at)})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.resume_from is None or not (self.resume_from / FILE).is_file():
            return
        import torch
        from safetensors import safe_open

        with safe_open(str(self.resume_from / FILE), framework="pt") as f, torch.no_grad():
            self.restarted_at = int(f.metadata()["restarted_at"])
            for name, layer in self.layers.items():
                weight = f.get_tensor(f"{name}.weight")
                if _is_4bit(layer):
                    self.copies[name] = weight
                    _requantize(layer, weight)
                else:
                    layer.get_base_layer().weight.copy_(weight)
        log.info("ReLoRA: the base as merged at step %d read back from %s", self.restarted_at, self.resume_from)

    # the output
    def save_whole(self, model: Any, out: str, config: Any) -> None:
        """The whole model, as the last step trained with: every LoRA update merged, a 4-bit base dequantized,
        modules trained in full (lora_modules_to_save) as trained; written as a plain transformers model."""
        import torch
        from transformers import AutoModelForCausalLM

        weights: dict[str, Any] = {}
        with torch.no_grad():
            for name, module in model.named_modules():
                name = _clean(name)
                if name in self.layers:
                    layer = self.layers[name]
                    base = self.copies.get(name)
                    weight = layer.get_base_layer().weight
                    if base is None:
                        base = _dequantize(weight) if _is_4bit(layer) else weight
                    delta = layer.get_delta_weight(ADAPTER)
                    weights[f"{name}.weight"] = (base.to(delta.device) + delta.to(base.dtype)).cpu()
                elif type(getattr(module, "weight", None)).__name__ == "Params4bit" and ".base_layer" not in name:
                    weights[f"{name}.weight"] = _dequantize(module.weight).cpu()  # not targeted: as it is
            for name, tensor in model.state_dict().items():
                clean = _clean(name).replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
                if "lora_" in clean or ".original_module." in clean or clean in weights:
                    continue
                if tensor.is_floating_point() and tensor.dim() > 0:
                    weights[clean] = tensor.detach().cpu()
        config = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
        dtype = model.get_input_embeddings().weight.dtype
        with torch.device("meta"):
            whole = AutoModelForCausalLM.from_config(config, dtype=dtype)
        expected = set(whole.state_dict())
        whole.load_state_dict({k: v.to(dtype) for k, v in weights.items() if k in expected}, strict=False, assign=True)
        missing = [k for k, v in whole.state_dict().items() if v.is_meta]
        if missing:
            whole.tie_weights()
            missing = [k for k, v in whole.state_dict().items() if v.is_meta]
        if missing:
            raise RuntimeError(f"ReLoRA's whole model lacks {missing[:3]}")
        whole.save_pretrained(out)
        log.info("ReLoRA: the whole model written to %s (every restart's update merged)", out)
