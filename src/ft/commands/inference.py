"""`ft inference`: generate with the trained model, prompting in the format it was trained on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from ft.config import FtConfig
from ft.errors import ConfigError


def load_for_inference(cfg: FtConfig, base_only: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer): the base, the base with its adapter (lora_model_dir, else output_dir), or the
    fully fine-tuned model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft.model.precision import device, resolve_dtype
    from ft.tokenizer.load import load_tokenizer

    m = cfg.model
    out = Path(cfg.training.output_dir)
    if cfg.diffusion.diffusion is not None and not base_only:
        raise ConfigError("this run trains a diffusion language model, which writes by unmasking a whole answer at once; "
                          "ft inference writes left to right (use --base-only for the base model)")
    if cfg.preference.reward_model and not base_only:
        raise ConfigError("this run trains a reward model, which scores texts and writes none; load it with "
                          "AutoModelForSequenceClassification (after `ft merge-lora` for an adapter)")
    if base_only:
        source, adapter = m.base_model, None
    elif cfg.adapter.adapter and not cfg.adapter.relora:  # ReLoRA writes the whole model
        source, adapter = m.base_model, Path(cfg.adapter.lora_model_dir or out)
    elif (out / "config.json").is_file():
        source, adapter = str(out), None  # a full fine-tune saved its model there
    else:
        raise ConfigError(f"no trained model in {out}; run `ft train` first, or pass --base-only")
    # the tokenizer saved with the run (it has any added tokens), else the configured one
    saved = adapter if adapter is not None else (out if source == str(out) else None)
    if saved is not None and (saved / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(saved)
    else:
        tokenizer = load_tokenizer(m)
    kwargs = {"dtype": resolve_dtype(m), "trust_remote_code": m.trust_remote_code}
    if source == m.base_model:
        from ft.model.load import dequantized

        kwargs.update(dequantized(m))
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if adapter is not None and (adapter / "bottleneck_config.json").is_file():
        from ft.model.methods.bottleneck import load

        model = load(model, adapter)  # ft's own bottleneck adapters
    elif adapter is not None:
        if not (adapter / "adapter_config.json").is_file():
            raise ConfigError(f"no adapter in {adapter}; train first, pass --lora-model-dir, or use --base-only")
        from ft.model.loftq import load_adapter

        if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        model = load_adapter(model, adapter)
    model.to(device()).eval()
    return model, tokenizer


def prompt_text(cfg: FtConfig, tokenizer: Any, text: str, extra: str = "") -> str:
    """The user's text in the first dataset's prompt format: what the model saw before each output."""
    from ft.data.formats import build_format

    ds = cfg.data.datasets[0]
    if ds.type is None:
        return text + (f"\n{extra}" if extra else "")
    return build_format(ds, tokenizer).prompt_for(text, extra)


def generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, stream: bool = False) -> str:
    import torch
    from transformers import TextStreamer

    from ft.tokenizer.load import adds_bos

    bos = adds_bos(tokenizer) and not prompt.startswith(tokenizer.bos_token or "\0")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if bos:
        ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
    ids = ids.to(model.device)
    sampling = temperature > 0
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None,
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def run_inference(cfg: FtConfig, prompt: Optional[str], extra: str, base_only: bool,
                  max_new_tokens: int, temperature: float, top_p: float) -> None:
    from ft.launch.backend import keep_caches_in

    keep_caches_in(cfg.training.output_dir)
    model, tokenizer = load_for_inference(cfg, base_only)
    prompts = [prompt] if prompt is not None else _interactive()
    for text in prompts:
        generate(model, tokenizer, prompt_text(cfg, tokenizer, text, extra), max_new_tokens, temperature, top_p, stream=True)


def _interactive():
    print("ft inference: type a prompt and press Enter (Ctrl-D to quit)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        if line.strip():
            yield line
