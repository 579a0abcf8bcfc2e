"""FSDP proven to shard, on two CPU processes over gloo.

accelerate gives a CPU run no FSDP plugin (it runs plain DDP), but torch 2.13's FSDP2 runs on CPU (FSDP1 does
not: its FullyShardedDataParallel needs an accelerator device; tests/test_fsdp_settings.py holds FSDP1's
settings to accelerate's plugin).
tests/inject/sitecustomize.py (`fsdp_cpu`, test-only, never in the product path) lets accelerate's state keep
the FSDP plugin ft's TrainingArguments made; everything else is the ordinary `ft train --num-processes 2`.
The runs record (`record`) how many parameter and optimizer-state elements each rank holds.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import ftproc
from compare import relative_difference, update_difference
from train_helpers import make_config

pytestmark = pytest.mark.slow(seconds=50)  # several processes or many runs; its tests take about this long each

TESTS = Path(__file__).resolve().parent
LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
STEPS = {"max_steps": 4, "learning_rate": 0.01, "optimizer": "adamw_torch", "save_steps": 2}


def _run(folder: Path, processes: int, *args: str, fsdp_cpu: bool = True, inject: str = "",
         path: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    (folder / "record").mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FT_TEST_RECORD": str(folder / "record"),
           "FT_TEST_INJECT": ("fsdp_cpu:0:0," if fsdp_cpu else "") + inject + "record:0:0",
           **({"PYTHONPATH": os.pathsep.join([*path, os.environ["PYTHONPATH"]])} if path else {})}
    launch = ("--num-processes", str(processes)) if processes > 1 else ()
    result = ftproc.run(["train", "cfg.yml", *launch, *args], cwd=folder, env=env, timeout=300)
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr \
            and "ft: done:" in result.stderr:
        # A rank that had finished aborted at interpreter exit in gloo's teardown (seen in CI, as in
        # tests/test_distributed.py's _two_ranks): the run's results are whole; what it said is kept.
        result = subprocess.CompletedProcess(result.args, 0, result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _record(folder: Path, rank: int) -> dict:
    return json.loads((folder / f"record/rank-{rank}.json").read_text())


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _weights(out: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / name))


def _stopped_after_step_2(done: Path) -> Path:
    """A folder beside `done` whose out/ holds what `done`'s run had written when it stopped after its step-2
    checkpoint (as a run killed then leaves it): that checkpoint, nothing later."""
    import shutil

    again = done.parent / f"{done.name}-again"
    shutil.copytree(done / "out" / "checkpoint-2", again / "out" / "checkpoint-2")
    return again


def _one_and_two(tmp_path: Path, tiny_model_dir, fsdp_config: dict, two_keys: dict | None = None, inject: str = "",
                 **keys):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    make_config(one, tiny_model_dir("llama"), micro_batch_size=4, **STEPS, **keys)
    make_config(two, tiny_model_dir("llama"), micro_batch_size=2, fsdp=["full_shard", "auto_wrap"],
                fsdp_config={"transformer_layer_cls_to_wrap": "LlamaDecoderLayer", **fsdp_config}, **STEPS, **keys,
                **(two_keys or {}))
    return one, two, _run(one, 1, fsdp_cpu=False), _run(two, 2, inject=inject)


def test_fsdp2_lora_shards_parameters_and_optimizer_state_and_trains_as_one_process(tmp_path: Path, tiny_model_dir):
    """Under SHARDED_STATE_DICT, where the Trainer's own final save writes no weights: the adapter is gathered
    alone and written once."""
    one, two, _, result = _one_and_two(tmp_path, tiny_model_dir, {"state_dict_type": "SHARDED_STATE_DICT"}, **LORA)
    assert "distributed: 2 processes, FSDP2" in result.stderr, result.stderr[-3000:]
    whole, ranks = _record(one, 0), [_record(two, r) for r in (0, 1)]
    assert all(r["fsdp"] for r in ranks)
    for key in ("params", "optimizer_state"):  # each rank holds about half (a dimension not divisible by 2 pads)
        assert all(0.45 * whole[key] <= r[key] <= 0.55 * whole[key] for r in ranks), (key, whole, ranks)
        assert sum(r[key] for r in ranks) >= whole[key]
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    adapter = _weights(two / "out", "adapter_model.safetensors")  # gathered and written once, by rank 0
    assert relative_difference(adapter, _weights(one / "out", "adapter_model.safetensors")) < 1e-3
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")), two / "out")  # it loads


def test_fsdp2_full_fine_tuning_saves_a_loadable_model_and_resumes(tmp_path: Path, tiny_model_dir):
    """With gradient checkpointing and activation offloading on the two processes (Axolotl's gpt-oss FSDP2 recipe;
    the offload hooks made to move CPU tensors here): the same losses and weights as one process without them."""
    offloading = {"gradient_checkpointing": True, "activation_offloading": True}
    one, two, _, _ = _one_and_two(tmp_path, tiny_model_dir, {}, two_keys=offloading, inject="offload_cpu:0:0,",
                                  max_grad_norm=0.0)
    whole, ranks = _record(one, 0), [_record(two, r) for r in (0, 1)]
    assert all(r["offloaded"] > 0 for r in ranks) and whole["offloaded"] == 0, ranks
    assert all(0.45 * whole["params"] <= r["params"] <= 0.55 * whole["params"] for r in ranks), (whole, ranks)
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    full = _weights(two / "out", "model.safetensors")
    assert relative_difference(full, _weights(one / "out", "model.safetensors")) < 1e-3
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(two / "out")  # a whole model, not shards
    # resume: the run as it stood after its checkpoint at step 2, started again without checkpointing and
    # offloading, ends where it did
    again = _stopped_after_step_2(two)
    make_config(again, tiny_model_dir("llama"), micro_batch_size=2, fsdp=["full_shard", "auto_wrap"], max_grad_norm=0.0,
                fsdp_config={"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}, **STEPS)
    result = _run(again, 2)
    assert "resuming from" in result.stderr and "checkpoint-2" in result.stderr, result.stderr[-3000:]
    assert relative_difference(_weights(again / "out", "model.safetensors"), full) < 1e-5


@pytest.mark.slow(seconds=70)
def test_fsdp2_qlora_each_process_loads_only_its_share_and_trains_as_one_process(tmp_path: Path):
    """The 70B FSDP + QLoRA recipe's loading path, on a 24-layer model: rank 1 builds the model on the meta
    device and reads and quantizes only its share of the checkpoint, one tensor at a time. Measured from
    outside ft (tests/inject: every live tensor's storage, sampled from the process's start to its first step),
    what rank 1 held while loading stays under its share plus one decoder layer as stored in the checkpoint,
    where holding the whole 4-bit model would not. The run equals one process with the same global batch, and
    resumes from its checkpoint to the same adapter."""
    from safetensors import safe_open

    from ft.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "model", "llama", hidden_size=128, intermediate_size=512, num_hidden_layers=24)
    qlora = {"adapter": "qlora", "load_in_4bit": True, "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    make_config(one, model, micro_batch_size=4, **STEPS, **qlora)
    make_config(two, model, micro_batch_size=2, fsdp=["full_shard", "auto_wrap"],
                fsdp_config={"transformer_layer_cls_to_wrap": "LlamaDecoderLayer", "fsdp_cpu_ram_efficient_loading": True}, **STEPS, **qlora)
    _run(one, 1, fsdp_cpu=False)
    result = _run(two, 2, inject="load_peak:1:0,")
    assert "read its share of" in result.stderr, result.stderr[-3000:]
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    adapter = _weights(two / "out", "adapter_model.safetensors")
    # AdamW's first steps move a weight by about the learning rate whatever its gradient's size, so a gradient
    # near zero that differs in its last bits (a sum in another order) moves one entry in a thousand by more
    assert relative_difference(adapter, _weights(one / "out", "adapter_model.safetensors")) < 1e-2

    ranks = [_record(two, r) for r in (0, 1)]
    share = ranks[1]["param_bytes"]  # rank 1's parameters as trained: half of the packed 4-bit model and the rest
    whole = ranks[0]["param_bytes"] + ranks[1]["param_bytes"]
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        layer = sum(f.get_tensor(k).nbytes for k in f.keys() if k.startswith("model.layers.0."))
    loading = json.loads((two / "record/load-rank-1.json").read_text())
    assert loading["samples"] >= 5  # each looks at every live object: a few per second
    assert whole > share + layer  # holding the whole model would fail the bound below
    assert 0.9 * share <= loading["peak_bytes"] <= share + layer, (loading, share, layer, whole)

    # resume: the run as it stood after its step-2 checkpoint, started again, ends where the uninterrupted run did
    again = _stopped_after_step_2(two)
    make_config(again, model, micro_batch_size=2, fsdp=["full_shard", "auto_wrap"],
                fsdp_config={"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}, **STEPS, **qlora)
    result = _run(again, 2)
    assert "resuming from" in result.stderr and "read its share of" in result.stderr, result.stderr[-3000:]
    assert relative_difference(_weights(again / "out", "adapter_model.safetensors"), adapter) < 1e-5


def test_fsdp2_muon_orthogonalizes_each_weight_whole_and_trains_as_one_process(tmp_path: Path, tiny_model_dir):
    """optimizer: muon under FSDP2 (Axolotl's Muon pretraining recipe): each weight matrix's update is gathered and
    made orthogonal whole, each process keeping its rows; with checkpoints of the optimizer's state on the way,
    what every weight moved in 4 steps equals one process's move (fp32, so Newton–Schulz runs in fp32)."""
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    keys = {**STEPS, "optimizer": "muon", "learning_rate": 0.02, "weight_decay": 0.01}
    make_config(one, tiny_model_dir("llama"), micro_batch_size=4, **keys)
    make_config(two, tiny_model_dir("llama"), micro_batch_size=2, fsdp_config={"fsdp_version": 2,
                "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}, **keys)
    _run(one, 1, fsdp_cpu=False)
    assert "FSDP2" in _run(two, 2).stderr
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    base = load_file(str(tiny_model_dir("llama") / "model.safetensors"))
    moved = [{k: v - base[k] for k, v in _weights(run / "out", "model.safetensors").items() if k in base}
             for run in (one, two)]
    assert moved[0].keys() == base.keys()
    for k, want in moved[0].items():
        assert float(want.norm()) > 0 and float((moved[1][k] - want).norm() / want.norm()) < 1e-3, k


def test_fsdp2_qlora_with_quantized_experts_reads_its_share_and_trains_as_one_process(tmp_path: Path, tiny_model_dir):
    """quantize_moe_experts under FSDP2 (Axolotl's Qwen 3.5 and GLM-4.7 MoE recipes, FSDP turned on by fsdp_config
    alone): each process reads and quantizes its share of the routed experts' 3-D weights as of the linear layers,
    holds half of the model's bytes, and the run equals one process storing the experts quantized."""
    folder = tiny_model_dir("qwen3_moe")
    keys = {"adapter": "qlora", "load_in_4bit": True, "quantize_moe_experts": True, "lora_r": 4, "lora_alpha": 8,
            "lora_target_linear": True, **STEPS}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    make_config(one, folder, micro_batch_size=4, **keys)
    make_config(two, folder, micro_batch_size=2, fsdp_config={"fsdp_version": 2,
                "fsdp_transformer_layer_cls_to_wrap": "Qwen3MoeDecoderLayer"}, **keys)
    _run(one, 1, fsdp_cpu=False)
    result = _run(two, 2)
    assert "read its share of" in result.stderr and "FSDP2" in result.stderr, result.stderr[-3000:]
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    assert relative_difference(_weights(two / "out", "adapter_model.safetensors"),
                               _weights(one / "out", "adapter_model.safetensors")) < 1e-2
    whole, ranks = _record(one, 0), [_record(two, r) for r in (0, 1)]
    assert all(r["sharded"] for r in ranks)
    assert all(0.4 * whole["param_bytes"] <= r["param_bytes"] <= 0.6 * whole["param_bytes"] for r in ranks), (whole, ranks)


@pytest.mark.slow(seconds=60)
def test_fsdp2_qlora_share_loading_with_tied_embeddings_biases_and_fully_trained_weights(tmp_path: Path):
    """Qwen2 with tied embeddings (the head is saved under the embeddings' name) and biased 4-bit projections;
    and a Llama training its embeddings and head in full beside LoRA (read whole before FSDP shards them): each
    trains as one process does."""
    from ft.tiny import make_tiny_model

    cases = [(make_tiny_model(tmp_path / "qwen2", "qwen2", tie_word_embeddings=True), "Qwen2DecoderLayer", {}),
             (make_tiny_model(tmp_path / "llama", "llama"), "LlamaDecoderLayer",
              {"lora_modules_to_save": ["embed_tokens", "lm_head"]})]
    for i, (model, layer, extra) in enumerate(cases):
        keys = {"adapter": "qlora", "load_in_4bit": True, "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True,
                **STEPS, **extra}
        one, two = tmp_path / f"one-{i}", tmp_path / f"two-{i}"
        one.mkdir()
        two.mkdir()
        make_config(one, model, micro_batch_size=4, **keys)
        make_config(two, model, micro_batch_size=2, fsdp=["full_shard", "auto_wrap"],
                    fsdp_config={"transformer_layer_cls_to_wrap": layer}, **keys)
        _run(one, 1, fsdp_cpu=False)
        assert "read its share of" in _run(two, 2).stderr
        a, b = _losses(one / "out"), _losses(two / "out")
        assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (model, a, b)


@pytest.mark.skipif(not (TESTS.parent / ".venv/qat/torchao").is_dir(), reason="torchao is not in .venv/qat")
def test_fsdp2_fp8_with_float8_all_gather_trains_as_one_process(tmp_path: Path, tiny_model_dir):
    """Axolotl's llama-3/3b-fp8-fsdp2 recipe: fp8 full fine-tuning under FSDP2 (its float8 all-gather said and
    not applied); two ranks follow one process's fp8 run over the same micro batches (float8's scales are per
    tensor: each micro batch's activations get the scale they get alone, each weight its whole weight's)."""
    folder = tiny_model_dir("llama")
    keys = {"fp8": True, **STEPS, "learning_rate": 1e-3}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    make_config(one, folder, micro_batch_size=2, gradient_accumulation_steps=2, **keys)
    make_config(two, folder, micro_batch_size=2, fp8_enable_fsdp_float8_all_gather=True,
                fsdp_config={"fsdp_version": 2, "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}, **keys)
    site = (str(TESTS.parent / ".venv/qat"),)
    _run(one, 1, fsdp_cpu=False, path=site)
    result = _run(two, 2, path=site)
    assert "gathers the weights in the training dtype" in result.stderr, result.stderr[-3000:]
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    assert all(_record(two, r)["sharded"] for r in (0, 1))


def test_fsdp2_lora_on_an_8bit_base_holds_the_integer_weights_whole_and_trains_as_one_process(tmp_path: Path,
                                                                                                tiny_model_dir):
    """load_in_8bit under FSDP2 (Axolotl's GLM-4.7-Flash recipe: 8-bit with quantize_moe_experts; DBRX's): the
    LLM.int8 weights and the 8-bit experts, whose row scales are no parameter FSDP could shard with them, stay whole
    on each process; every other parameter and LoRA's optimizer state are sharded; the run equals one process, and
    resumes from a checkpoint (which holds the scales) to where it ended."""
    folder = tiny_model_dir("qwen3_moe")
    keys = {"adapter": "lora", "load_in_8bit": True, "quantize_moe_experts": True, "lora_r": 4, "lora_alpha": 8,
            "lora_target_linear": True, **STEPS}
    fsdp = {"fsdp_config": {"fsdp_version": 2, "fsdp_transformer_layer_cls_to_wrap": "Qwen3MoeDecoderLayer"}}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    make_config(one, folder, micro_batch_size=4, **keys)
    make_config(two, folder, micro_batch_size=2, **fsdp, **keys)
    _run(one, 1, fsdp_cpu=False)
    result = _run(two, 2)
    assert "integer 8-bit weights held whole" in result.stderr and "FSDP2" in result.stderr, result.stderr[-3000:]
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-3 * abs(x) for x, y in zip(a, b)), (a, b)
    adapter = _weights(two / "out", "adapter_model.safetensors")
    assert relative_difference(adapter, _weights(one / "out", "adapter_model.safetensors")) < 1e-2
    whole, ranks = _record(one, 0), [_record(two, r) for r in (0, 1)]
    int8 = (4 * whole["params"] - whole["param_bytes"]) // 3  # fp32 training: the one-byte elements
    assert int8 > 0.2 * whole["params"], whole
    for r in ranks:  # LoRA's optimizer state halves, and every parameter but the 8-bit ones, which stay whole
        assert r["sharded"] and 0.45 * whole["optimizer_state"] <= r["optimizer_state"] <= 0.55 * whole["optimizer_state"]
        assert abs(r["params"] - (int8 + (whole["params"] - int8) / 2)) <= 0.01 * whole["params"], (whole, r, int8)
    again = _stopped_after_step_2(two)
    make_config(again, folder, micro_batch_size=2, **fsdp, **keys)
    result = _run(again, 2)
    assert "resuming from" in result.stderr and "checkpoint-2" in result.stderr, result.stderr[-3000:]
    assert relative_difference(_weights(again / "out", "adapter_model.safetensors"), adapter) < 1e-5


def test_fsdp2_with_context_parallelism_and_tiled_mlp_trains_as_one_process(tmp_path: Path, tiny_model_dir):
    """Axolotl's ALST recipe on FSDP2 (llama3-8b-fsdp2-alst): full fine-tuning, each packed micro batch of the
    group split over its 2 processes (context_parallel_size: 2), the MLPs run a tile of tokens at a time and
    recomputed inside FSDP's units, gradient checkpointing on, and the norms (their weights trained, and sharded
    on the two processes) by ft's chunked function (chunked_rms_norm); the group draws one process's micro batches
    and follows its run. The two processes' layers also keep their attention outputs (selective_checkpointing,
    whose gradients are plain checkpointing's: tests/test_selective_checkpointing.py)."""
    keys = {"sample_packing": True, "tiled_mlp": True, "tiled_mlp_tokens": 16, "gradient_checkpointing": True,
            "chunked_rms_norm": True, **STEPS, "max_steps": 3}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    make_config(one, tiny_model_dir("llama"), micro_batch_size=2, **keys)
    make_config(two, tiny_model_dir("llama"), micro_batch_size=2, context_parallel_size=2,
                fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": "LlamaDecoderLayer"},
                selective_checkpointing=True, **keys)
    _run(one, 1, fsdp_cpu=False)
    result = _run(two, 2)
    assert "FSDP2" in result.stderr and "context parallelism: groups of 2" in result.stderr, result.stderr[-3000:]
    assert "chunked_rms_norm: 5 RMSNorms" in result.stderr, result.stderr[-3000:]  # two layers' two, and the final one
    assert "selective_checkpointing: 2 of 2 recomputed layers keep" in result.stderr, result.stderr[-3000:]
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 3 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    # three Adam steps: the two summation orders differ by a share of what training moved (6.8e-4 on an AVX512-BF16
    # EPYC, 2.2e-4 of the weights' size); with each process's queries seeing only its own slice's keys: 1.09
    start = _weights(tiny_model_dir("llama"), "model.safetensors")
    assert update_difference(_weights(two / "out", "model.safetensors"), _weights(one / "out", "model.safetensors"), start) < 1e-2
