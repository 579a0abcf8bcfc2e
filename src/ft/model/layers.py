"""What the config changes in the loaded model's layers before checkpointing and the adapter: quantization-aware
training's fake-quantized layers, float8 matmuls, BitNet's ternary layers, the tiled MLPs, the chunked norms and
the grouped attention backward. Each lives in its own module; this is their order, and what the log says of them."""

from __future__ import annotations

import logging
from typing import Any

from ft.config.model import ModelConfig, QuantizationConfig
from ft.config.training import TrainingConfig

log = logging.getLogger("ft")


def change_layers(model: Any, m: ModelConfig, q: QuantizationConfig, t: TrainingConfig) -> None:
    if q.qat:
        from ft.model.qat import prepare

        prepare(model, q.qat)
    if q.fp8:
        from ft.model.fp8 import convert

        log.info("fp8: %d linear layers compute in float8 (torchao; the first and last stay in %s)", convert(model),
                 m.precision)
        if q.fp8_enable_fsdp_float8_all_gather:
            log.info("fp8_enable_fsdp_float8_all_gather: FSDP2 gathers the weights in the training dtype; the matmuls are "
                     "float8 either way (gathering in float8 did not follow one process's run: docs/methods.md)")
    if q.use_onebitllms:
        from ft.model.bitnet import to_bitnet

        log.info("use_onebitllms: %d linear layers train as BitNet b1.58 (ternary weights, 8-bit inputs)", to_bitnet(model))
    if t.tiled_mlp:
        from ft.model.tiled_mlp import tile_mlps

        tile_mlps(model, t.tiled_mlp_tokens)
    if t.chunked_rms_norm:
        from ft.model.rms_norm import chunk_norms

        chunk_norms(model)
    if t.grouped_attention_backward:
        from ft.model.attention_backward import mark

        mark(model)
