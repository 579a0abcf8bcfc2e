"""`adapter: bottleneck`: Houlsby's adapters (seed 004): after each layer's attention and after its MLP, a
down-projection to `bottleneck_size`, a nonlinearity, an up-projection back, added to what the block gave (the
up-projection starts at zero, so training starts from the base model). ft's own module: PEFT has none, and the
adapters library does not support transformers 5. Saved alone (bottleneck_model.safetensors and
bottleneck_config.json); loaded beside the base by `ft inference` and `ft eval`; never merged (the nonlinearity
sits between the two projections, so there is no single weight to fold them into)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ft.model.methods import METHODS, Method

CONFIG = "bottleneck_config.json"
WEIGHTS = "bottleneck_model.safetensors"
NAME = "ft_bottleneck"  # the submodules' name in each decoder layer: ft_bottleneck_attn, ft_bottleneck_mlp


def insert(model: Any, size: int, activation: str, seed: int) -> Any:
    """The model with a bottleneck adapter after every decoder layer's attention and MLP; the base frozen."""
    import torch

    act = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}[activation]

    class Bottleneck(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.down, self.act, self.up = torch.nn.Linear(width, size), act(), torch.nn.Linear(size, width)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

        def forward(self, x: Any) -> Any:
            return x + self.up(self.act(self.down(x.to(self.down.weight.dtype)))).to(x.dtype)

    def after(adapter: Any) -> Any:
        def hook(module: Any, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (adapter(output[0]), *output[1:])
            return adapter(output)
        return hook

    for p in model.parameters():
        p.requires_grad_(False)
    width = model.config.get_text_config().hidden_size
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for layer in model.get_decoder().layers:
        for block in ("self_attn", "mlp"):
            adapter = Bottleneck(width).to(next(layer.parameters()).device)
            layer.add_module(f"{NAME}_{block.split('_')[-1]}", adapter)
            getattr(layer, block).register_forward_hook(after(adapter))
    torch.random.set_rng_state(generator_state)
    model.ft_bottleneck = {"bottleneck_size": size, "bottleneck_activation": activation}
    return model


def apply(a: Any, model: Any, seed: int) -> Any:
    return insert(model, a.bottleneck_size, a.bottleneck_activation, seed)


def save(model: Any, out: str) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if NAME in n}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(state, str(Path(out) / WEIGHTS))
    (Path(out) / CONFIG).write_text(json.dumps({**model.ft_bottleneck, "base_model": model.config._name_or_path}, indent=1))


def load(model: Any, folder: Path) -> Any:
    """The base with the adapters saved in `folder` put back."""
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    model = insert(model, config["bottleneck_size"], config["bottleneck_activation"], 0)
    missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=False)
    wanted = [n for n in missing if NAME in n]
    if wanted or unexpected:
        from ft.errors import ConfigError

        raise ConfigError(f"the bottleneck adapters in {folder} do not fit this model ({(wanted or unexpected)[0]})")
    return model


class Bottlenecks(Method):
    def refusal(self, name: str, cfg: Any) -> Optional[tuple[str, str]]:
        if cfg.adapter.lora_model_dir:
            return "lora_model_dir", "continuing bottleneck adapters is not supported yet; remove `lora_model_dir`"
        if cfg.distributed.fsdp:
            return "fsdp", "`adapter: bottleneck` is not supported with fsdp yet; use DDP or DeepSpeed"
        return super().refusal(name, cfg)


METHODS.add("bottleneck", Bottlenecks("bottleneck adapters (Houlsby): down-projection, nonlinearity, up-projection, "
                                      "residual, after each attention and each MLP", lambda *_: None, mergeable=False,
                                      bases=(None, 8, 4), targets_linear=False, apply=apply), aliases=("houlsby",))
