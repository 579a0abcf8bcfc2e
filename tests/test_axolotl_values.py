"""Axolotl's values for keys ft shares with it (config/axolotl_values.py), its dataset-entry keys, and the keys
ft took from it (roles, drop_system_message, alpaca:chat, dataset_exact_deduplication, unfrozen_parameters,
lora_target_parameters, model_config, resize_token_embeddings_to_32x): each read as Axolotl reads it, or refused
in one sentence naming the feature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft.commands.config import validation_context
from ft.config import load_config
from ft.errors import ConfigError
from helpers import dataset, render, tokenize, trained_text

REPO = Path(__file__).resolve().parents[1]
BASE = "base_model: ./model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\n"
CHAT = "base_model: ./model\ndatasets:\n  - path: data.jsonl\n    type: chat_template\n"


def _load(tmp_path: Path, text: str):
    said: list[str] = []
    (tmp_path / "cfg.yml").write_text(text)
    return load_config(tmp_path / "cfg.yml", context=validation_context(), warn=said.append), said


def _refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message and "did you mean" not in message and "unknown key" not in message, message
    return message


@pytest.mark.parametrize("name, ft_name", [("qwen3", "tokenizer_default"), ("falcon_h1", "tokenizer_default"),
                                           ("gemma3", "tokenizer_default"), ("phi_3", "phi3"), ("chatml", "chatml")])
def test_named_chat_templates(name: str, ft_name: str, tmp_path: Path):
    cfg, said = _load(tmp_path, f"{CHAT}    chat_template: {name}\nchat_template: {name}\n")
    assert cfg.model.chat_template == ft_name and cfg.data.datasets[0].chat_template == ft_name
    assert (sum(f"`chat_template: {name}`" in s for s in said) == 2) is (name != ft_name), said


def test_chat_templates_ft_cannot_honour_are_refused(tmp_path: Path):
    assert "(multimodal models)" in _refused(tmp_path, f"{BASE}chat_template: llava\n")
    assert "Axolotl's own alpaca conversation format" in _refused(tmp_path, f"{BASE}chat_template: alpaca\n")
    cfg, _ = _load(tmp_path, f"{BASE}chat_template: jinja\nchat_template_jinja: '{{{{ messages }}}}'\n")
    assert cfg.model.chat_template is None and cfg.model.chat_template_jinja == "{{ messages }}"


@pytest.mark.parametrize("value", ["adamw_torch_8bit", "adamw_torch_4bit", "ao_adamw_8bit"])
def test_torchao_optimizers_become_bitsandbytes_8bit(value: str, tmp_path: Path):
    cfg, said = _load(tmp_path, f"{BASE}optimizer: {value}\n")
    assert cfg.training.optimizer == "adamw_bnb_8bit"
    assert any(f"`optimizer: {value}`" in s and "bitsandbytes' 8-bit AdamW" in s for s in said), said
    assert ("instead of 1" in " ".join(said)) is ("4bit" in value)


def test_axolotl_only_optimizers_and_rl_methods_are_refused_by_name(tmp_path: Path):
    assert "Axolotl's optimizer `dion` is not supported by ft yet" in _refused(tmp_path, f"{BASE}optimizer: dion\n")
    assert "Axolotl's `rl: gkd` (GKD)" in _refused(tmp_path, f"{BASE}rl: gkd\n")


@pytest.mark.parametrize("axolotl_file, ft_file, offloads", [
    ("zero3_bf16.json", "zero3.json", set()),
    ("zero3_bf16_cpuoffload_all.json", "zero3_offload.json", {"offload_param", "offload_optimizer"}),
    ("zero3_bf16_cpuoffload_params.json", "zero3_offload_params.json", {"offload_param"}),
    ("zero2_torch_compile.json", "zero2.json", set()),
])
def test_axolotl_deepspeed_files(axolotl_file: str, ft_file: str, offloads: set, tmp_path: Path):
    cfg, said = _load(tmp_path, f"{BASE}deepspeed: {REPO}/deepspeed_configs/{axolotl_file}\n")
    assert cfg.distributed.deepspeed == f"{REPO}/deepspeed_configs/{ft_file}"
    zero = json.loads(Path(cfg.distributed.deepspeed).read_text())["zero_optimization"]
    assert {k for k in zero if k.startswith("offload_")} == offloads
    assert zero["stage"] == int(axolotl_file[4])


def test_values_axolotl_reads_its_own_way(tmp_path: Path):
    cfg, said = _load(tmp_path, f"{BASE}gradient_checkpointing: offload\nevals_per_epoch: 0\nwarmup_steps: 0.1\n"
                                "tokens:\n  pad_token: <pad>\ncosine_min_lr_ratio: 1.0\n")
    t = cfg.training
    assert t.gradient_checkpointing is True and t.activation_offloading is True
    assert t.evals_per_epoch is None and t.warmup_steps is None and t.warmup_ratio == 0.1
    assert cfg.model.special_tokens.pad_token == "<pad>" and cfg.model.tokens == ()
    assert t.cosine_min_lr_ratio == 1.0
    assert len([s for s in said if "from Axolotl" in s]) == 4, said
    cfg, _ = _load(tmp_path, f"{BASE}activation_offloading: legacy\ngradient_checkpointing: true\n")
    assert cfg.training.activation_offloading is True


def test_pure_precision_keys_refine_the_mixed_ones(tmp_path: Path):
    assert _load(tmp_path, f"{BASE}bf16: true\nbfloat16: true\n")[0].model.bf16 == "full"
    assert _load(tmp_path, f"{BASE}bfloat16: true\nbf16: true\n")[0].model.bf16 == "full"
    assert _load(tmp_path, f"{BASE}fp16: false\nfloat16: true\n")[0].model.fp16 is True


def test_dataset_entry_keys(tmp_path: Path):
    cfg, said = _load(tmp_path, f"{CHAT}    message_property_mappings:\n      role: from\n      content: value\n"
                                "    train_on_eot: last\n    trust_remote_code: false\n")
    ds = cfg.data.datasets[0]
    assert (ds.message_field_role, ds.message_field_content, ds.train_on_eos) == ("from", "value", "last")
    assert any("`message_property_mappings` → `message_field_role: from`" in s for s in said), said
    cfg, _ = _load(tmp_path, f"{CHAT}    message_property_mappings:\n      role: role\n      content: content\n")
    assert cfg.data.datasets[0].message_field_role is None
    assert "entry `thinking`" in _refused(tmp_path, f"{CHAT}    message_property_mappings:\n      thinking: t\n")
    assert "Axolotl's dataset key `split_thinking` (reasoning text" in _refused(tmp_path, f"{CHAT}    split_thinking: true\n")
    cfg, _ = _load(tmp_path, f"{CHAT}    field_thinking: t\n    template_thinking_key: thinking\n")
    assert (cfg.data.datasets[0].field_thinking, cfg.data.datasets[0].template_thinking_key) == ("t", "thinking")
    assert "keep one" in _refused(tmp_path, f"{CHAT}    train_on_eot: all\n    train_on_eos: turn\n")


def test_fsdp1_keys_without_a_version_mean_fsdp1_as_axolotl_reads_them(tmp_path: Path):
    from ft.launch.fsdp import library_fsdp_config

    fsdp = "fsdp:\n  - full_shard\n  - auto_wrap\nfsdp_config:\n  fsdp_limit_all_gathers: true\n  fsdp_sync_module_states: true\n"
    cfg, _ = _load(tmp_path, BASE + fsdp)
    assert cfg.distributed.fsdp_config.fsdp_version == 1
    library = library_fsdp_config(cfg.distributed)
    assert library["version"] == 1 and library["limit_all_gathers"] is True and library["sync_module_states"] is True
    message = str(pytest.raises(ConfigError, _load, tmp_path, BASE + fsdp + "fsdp_version: 2\n").value)
    assert "is read only by FSDP1" in message


@pytest.mark.parametrize("quantized", ["load_in_8bit: true\nadapter: lora\n",
                                       "load_in_4bit: true\nadapter: qlora\nquantize_moe_experts: true\n"])
def test_fsdp1_by_its_keys_runs_as_fsdp2_for_integer_weights_fsdp1_cannot_shard(quantized: str, tmp_path: Path):
    """Axolotl's DBRX 8-bit and Llama 4 linearized-experts recipes: FSDP1 read from the keys, FSDP2 run, said;
    FSDP1 asked for by name is refused, and other bases stay FSDP1."""
    fsdp = "fsdp:\n  - full_shard\n  - auto_wrap\nfsdp_config:\n  fsdp_use_orig_params: false\n  fsdp_offload_params: true\n"
    cfg, said = _load(tmp_path, BASE + quantized + fsdp)
    f = cfg.distributed.fsdp_config
    assert f.fsdp_version == 2 and f.fsdp_offload_params and f.fsdp_use_orig_params is None
    assert any("runs as FSDP2" in s and "`fsdp_use_orig_params`" in s for s in said), said
    message = _refused(tmp_path, BASE + quantized + fsdp + "fsdp_version: 1\n")
    assert "needs FSDP2" in message, message
    cfg, said = _load(tmp_path, BASE + "load_in_4bit: true\nadapter: qlora\n" + fsdp)
    assert cfg.distributed.fsdp_config.fsdp_version == 1 and not any("FSDP2" in s for s in said)


def test_ray_workers_are_processes_ft_launches(tmp_path: Path):
    """Axolotl's lora-1b-ray: `use_ray` with `ray_num_workers` → `num_processes` (tests/test_launch.py runs it);
    Ray's keys without use_ray are ignored; workers of other than one GPU are refused."""
    cfg, said = _load(tmp_path, BASE + "use_ray: true\nray_num_workers: 4\nresources_per_worker: {GPU: 1}\n"
                      "ray_run_name: run\n")
    assert cfg.distributed.num_processes == 4 and any("`num_processes: 4`" in s for s in said), said
    cfg, said = _load(tmp_path, BASE + "use_ray: false\nray_num_workers: 4\n")
    assert cfg.distributed.num_processes is None and any("`ray_num_workers` ignored" in s for s in said), said
    assert "one GPU" in _refused(tmp_path, BASE + "use_ray: true\nresources_per_worker: {GPU: 2}\n")


ROLE_ROWS = [{"messages": [{"role": "system", "content": "Be terse."}, {"role": "human", "content": "Say hi."},
                           {"role": "bot", "content": "hi"}]}]


def test_roles_map_the_rows_role_names_and_system_turns_can_be_dropped(tiny_tokenizer):
    roles = {"user": ["human"], "assistant": ["bot", "gpt"]}
    kept = tokenize(ROLE_ROWS, tiny_tokenizer, "chat_template", {"roles": roles}, sequence_len=512)
    expected = tiny_tokenizer.apply_chat_template([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hi."},
                                                   {"role": "assistant", "content": "hi"}], tokenize=True)
    assert kept.input_ids[0] == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert trained_text(kept.input_ids[0], kept.labels[0], tiny_tokenizer) == "hi<|im_end|>"
    dropped = tokenize(ROLE_ROWS, tiny_tokenizer, "chat_template", {"roles": roles, "drop_system_message": True}, sequence_len=512)
    text = tiny_tokenizer.decode(dropped.input_ids[0])
    assert "Be terse." not in text and "Say hi." in text and len(dropped.input_ids[0]) < len(kept.input_ids[0])
    with pytest.raises(ValueError, match="listed under both"):
        dataset("chat_template", roles={"user": ["human"], "assistant": ["human"]})


@pytest.mark.parametrize("type_, prompt", [
    ("alpaca:chat", "SYSTEM: Below is an instruction that describes a task, paired with an input that provides further "
     "context. Write a response that appropriately completes the request.\nUSER: Add.\n2 3\nASSISTANT:"),
    ("alpaca:phi", "<|system|>\nBelow is an instruction that describes a task, paired with an input that provides "
     "further context. Write a response that appropriately completes the request.<|end|>\n<|user|>\nAdd.<|end|>2 3<|assistant|>"),
])
def test_alpaca_styles(type_: str, prompt: str, tiny_tokenizer):
    segments = render([{"instruction": "Add.", "input": "2 3", "output": "5"}], tiny_tokenizer, type_)[0]
    assert [(s.text, s.train) for s in segments] == [(prompt, False), ("5", True)]
    no_input = render([{"instruction": "Add.", "output": "5"}], tiny_tokenizer, type_)[0][0].text
    assert "paired with an input" not in no_input and "Add." in no_input


def test_jeopardy_rows(tiny_tokenizer):
    """Axolotl's `type: jeopardy` (its jeopardy-bot example): the clue and category in its alpaca-style prompt, the
    answer trained as "what is <answer>"."""
    row = {"question": "It orbits the Earth", "category": "SPACE", "answer": "the Moon"}
    segments = render([row], tiny_tokenizer, "jeopardy")[0]
    assert [(s.text, s.train) for s in segments] == [
        ("Below is a Jeopardy clue paired with input providing the category of the clue. Write a concise response that "
         "best answers tbe clue given the category.\n\n### Instruction:\nIt orbits the Earth\n\n### Input:\nSPACE\n\n"
         "### Response:\n", False), ("what is the Moon", True)]


def test_exact_deduplication(tiny_tokenizer):
    from ft.config.data import DataConfig
    from ft.data.prepare import build

    rows = [{"instruction": f"say {w}", "output": w} for w in ("a", "b", "a", "c", "b", "a")]
    source = Path(__file__).parent / "data" / "dups.jsonl"
    ds = {"path": str(source), "type": "alpaca"}
    try:
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
        plain = build(DataConfig.model_validate({"datasets": [ds]}), 0, tiny_tokenizer)
        train, _, stats = build(DataConfig.model_validate({"datasets": [ds], "dataset_exact_deduplication": True}), 0, tiny_tokenizer)
        held = build(DataConfig.model_validate({"datasets": [ds], "test_datasets": [ds], "dataset_exact_deduplication": True}),
                     0, tiny_tokenizer)
    finally:
        source.unlink()
    assert len(plain[0].input_ids) == 6 and len(train.input_ids) == 3 and stats["duplicates"] == 3
    assert sorted(map(tuple, train.input_ids)) == sorted(set(map(tuple, plain[0].input_ids)))
    assert held[1].input_ids == [] and held[2]["duplicates"] == 3 + 6  # every test row is a training row


def test_unfrozen_parameters(tmp_path: Path):
    cfg, _ = _load(tmp_path, f"{BASE}unfrozen_parameters:\n  - ^lm_head.*\n  - model.layers.1.mlp\n")
    assert cfg.adapter.unfrozen_parameters == ("^lm_head.*", "model.layers.1.mlp")
    assert "not a regular expression" in _refused(tmp_path, f"{BASE}unfrozen_parameters: ['lm_head[']\n")
    assert "a regular expression is given alone" in _refused(tmp_path, f"{BASE}adapter: lora\nlora_target_modules: "
                                                                        "['q_proj', 'layers.[0-9]+.v_proj']\n")
    assert "has no `adapter:`" in _refused(tmp_path, f"{BASE}lora_target_parameters: [mlp.experts.down_proj]\n")


def test_unfrozen_parameters_with_an_adapter_pick_its_weights_by_the_base_names(tmp_path: Path, tiny_model_dir):
    """Axolotl's Gemma 3 QLoRA examples (unfrozen_parameters: [^model.language_model.*, ^lm_head.*] to leave the
    vision tower out): with an adapter, only its weights on matching layers train, and only those change."""
    import torch

    from train_helpers import build, make_config

    folder = tiny_model_dir("llama")
    keys = {"adapter": "lora", "lora_target_linear": True, "max_steps": 2, "learning_rate": 0.01}
    trainer, model, _ = build(make_config(tmp_path, folder, **keys, unfrozen_parameters=["^model.layers.1.+", "^lm_head.*"]))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith("base_model.model.model.layers.1.") and ".lora_" in n for n in trained)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    changed = {n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])}
    assert changed == {n for n in before if ".layers.1." in n}
    with pytest.raises(ConfigError, match="matches none of the adapter's weights of this model"):
        build(make_config(tmp_path, folder, **keys, unfrozen_parameters=["^model.language_model.*"]))


def test_model_side_keys_on_a_real_model(tiny_model_dir):
    import torch

    from ft.config.adapter import AdapterConfig
    from ft.config.model import ModelConfig
    from ft.model.adapter import apply_adapter
    from ft.model.load import model_config, unfreeze_only
    from transformers import AutoModelForCausalLM

    folder = str(tiny_model_dir("llama"))
    config = model_config(ModelConfig(base_model=folder, model_config_overrides={"rms_norm_eps": 0.125}))
    assert config.rms_norm_eps == 0.125
    with pytest.raises(ConfigError, match="`no_such_setting` is not a setting of LlamaConfig"):
        model_config(ModelConfig(base_model=folder, model_config_overrides={"no_such_setting": 1}))

    model = AutoModelForCausalLM.from_pretrained(folder)
    trained = unfreeze_only(model, ("model.layers.1.mlp",))
    assert trained == 3 and all(p.requires_grad == n.startswith("model.layers.1.mlp.") for n, p in model.named_parameters())
    with pytest.raises(ConfigError, match="matches none of the parameters of this model"):
        unfreeze_only(model, ("model.language_model.*",))

    lora = apply_adapter(AdapterConfig(adapter="lora", lora_target_parameters=("mlp.down_proj.weight",)), model, False, 1)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("mlp.down_proj.lora_" in n for n in names)
    x = torch.arange(1, 9).unsqueeze(0)
    lora(input_ids=x, labels=x).loss.backward()
    assert all(p.grad is not None for p in lora.parameters() if p.requires_grad)
    regex = apply_adapter(AdapterConfig(adapter="lora", lora_target_modules=r"model.layers.[\d]+.self_attn.(q|v)_proj"),
                          AutoModelForCausalLM.from_pretrained(folder), False, 1)
    adapted = {n.split(".lora_")[0].split(".")[-1] for n, p in regex.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ConfigError, match="matches no module of this model; its module names look like model.layers"):
        apply_adapter(AdapterConfig(adapter="lora", lora_target_modules=r"model.language_model.layers.[\d]+.mlp.up_proj"),
                      AutoModelForCausalLM.from_pretrained(folder), False, 1)
    with pytest.raises(ConfigError, match="`mlp.experts.down_proj` is not a parameter of this model"):
        apply_adapter(AdapterConfig(adapter="lora", lora_target_parameters=("mlp.experts.down_proj",)),
                      AutoModelForCausalLM.from_pretrained(folder), False, 1)


def test_embeddings_padded_to_a_multiple_of_32(tiny_model_dir):
    from ft.config.model import ModelConfig, QuantizationConfig
    from ft.model.load import load_model
    from ft.tokenizer.load import load_tokenizer

    m = ModelConfig(base_model=str(tiny_model_dir("llama")), tokens=("<new_a>", "<new_b>", "<new_c>"),
                    resize_token_embeddings_to_32x=True)
    tokenizer = load_tokenizer(m)
    model, grew = load_model(m, QuantizationConfig(), tokenizer, full=True, fsdp=False)
    rows = model.get_input_embeddings().weight.shape[0]
    assert grew and rows % 32 == 0 and len(tokenizer) <= rows < len(tokenizer) + 32
    assert model.get_output_embeddings().weight.shape[0] == rows


@pytest.mark.parametrize("kind, feature", [("oasst", "its `oasst` prompt format"),
                                           ("chatml.intel", "its DPO prompt strategies"),
                                           ("kto.ultra", "KTO rows")])
def test_axolotl_dataset_types_ft_lacks_are_refused_by_name(kind: str, feature: str, tmp_path: Path):
    text = BASE.replace("type: alpaca", f"type: {kind}")
    assert f"Axolotl's dataset type `{kind}` ({feature}) is not supported by ft yet" in _refused(tmp_path, text)
    assert "did you mean" in str(pytest.raises(ConfigError, _load, tmp_path, BASE.replace("type: alpaca", "type: alpacca")).value)


def test_pretraining_dataset_streaming_and_kernel_keys(tmp_path: Path):
    """pretraining_dataset → completion datasets (text_column → field); streaming and the packing buffers, Gemma 4's
    per-layer kernels and flex attention's compile arguments are no-ops; llama4_linearized_experts quantizes the
    experts as Axolotl's linear experts are."""
    text = ("base_model: ./model\npretraining_dataset:\n  - path: corpus.jsonl\n    name: en\n    type: pretrain\n"
            "    text_column: body\n    split: train\npretrain_multipack_attn: true\npretrain_multipack_buffer_size: "
            "10000\nstreaming: true\nstreaming_multipack_buffer_size: 10000\ngemma4_hybrid_attn_impl: true\n"
            "flex_attn_compile_kwargs:\n  dynamic: false\n")
    cfg, said = _load(tmp_path, text)
    ds = cfg.data.datasets[0]
    assert (ds.path, ds.name, ds.type, ds.field, ds.split) == ("corpus.jsonl", "en", "completion", "body", "train")
    for key in ("pretrain_multipack_attn", "streaming", "gemma4_hybrid_attn_impl", "flex_attn_compile_kwargs"):
        assert any(f"`{key}" in s and "ignored" in s for s in said), (key, said)
    assert "`pretraining_dataset` key `skip`" in _refused(tmp_path, text.replace("    split: train\n", "    skip: 5\n"))
    assert _load(tmp_path, text.replace("text_column: body", "field: body"))[0].data.datasets[0].field == "body"
    assert "of `type: ebft_pretrain` is not supported" in _refused(tmp_path, text.replace("pretrain\n", "ebft_pretrain\n", 1))
    assert "pretrain_multipack_attn" in _refused(tmp_path, text.replace("attn: true", "attn: false"))
    cfg, said = _load(tmp_path, f"{BASE}llama4_linearized_experts: true\nload_in_4bit: true\nadapter: qlora\n")
    assert cfg.quantization.quantize_moe_experts is True
    assert any("`llama4_linearized_experts: true`" in s and "`quantize_moe_experts: true`" in s for s in said), said


def test_a_pretraining_config_from_scratch_trains(tmp_path: Path, tiny_model_dir):
    """Axolotl's pretraining example shape: pretraining_dataset with reinit_weights on a local corpus; the model
    starts from fresh weights (not the checkpoint's, the same for the same seed) and its loss falls."""
    import torch
    from transformers import AutoModelForCausalLM

    from train_helpers import build

    folder = tiny_model_dir("llama")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"body": f"the cat sat on mat number {i % 4}"}) + "\n"
                                                   for i in range(64)))
    text = (f"base_model: {folder}\npretraining_dataset:\n  - path: {tmp_path / 'corpus.jsonl'}\n    type: pretrain\n"
            f"    text_column: body\nreinit_weights: true\nsequence_len: 64\nmicro_batch_size: 8\nmax_steps: 6\n"
            f"learning_rate: 0.01\noutput_dir: {tmp_path / 'out'}\nuse_tensorboard: false\nlogging_steps: 1\n")
    cfg, _ = _load(tmp_path, text)
    trainer, model, _ = build(cfg)
    checkpoint = AutoModelForCausalLM.from_pretrained(folder)
    name = "model.layers.0.self_attn.q_proj.weight"
    fresh = model.get_parameter(name).detach().clone()
    assert not torch.equal(fresh, checkpoint.get_parameter(name))
    assert torch.equal(build(cfg)[1].get_parameter(name), fresh)  # seeded
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert "keep one" in _refused(tmp_path, text + "load_in_4bit: true\nadapter: qlora\n")


def test_dp_shard_size_is_the_number_of_processes_fsdp_shards_over(tmp_path: Path, tiny_model_dir):
    from ft.errors import UserError
    from train_helpers import make_config

    cfg, _ = _load(tmp_path, f"{BASE}dp_shard_size: 16\ndp_replicate_size: 1\nfsdp: [full_shard, auto_wrap]\n"
                             "fsdp_config:\n  fsdp_version: 2\n")
    assert cfg.distributed.dp_shard_size == 16
    assert "set `fsdp`" in _refused(tmp_path, f"{BASE}dp_shard_size: 2\n")
    assert "(replicated FSDP groups (HSDP))" in _refused(tmp_path, f"{BASE}dp_replicate_size: 2\n")
    from ft.commands.train import build_run

    with pytest.raises(UserError, match="`dp_shard_size: 2`, and this run has 1 process: ft shards each weight over every"):
        build_run(make_config(tmp_path, tiny_model_dir("llama"), dp_shard_size=2, fsdp=["full_shard"]), 1)
    with pytest.raises(UserError, match="`dp_shard_size: 2` × context_parallel_size 2, and this run has 2 processes.*launch 4"):
        build_run(make_config(tmp_path, tiny_model_dir("llama"), dp_shard_size=2, context_parallel_size=2,
                              fsdp=["full_shard"]), 2)


def test_evaluation_keys_of_axolotls_phi3_example(tmp_path: Path):
    """eval_table_size (deprecated in Axolotl, a no-op there) is ignored; `perplexity` among eval_causal_lm_metrics is
    what ft computes at every evaluation anyway; eta_min (no one's key, ignored by Axolotl) says ft's name."""
    cfg, said = _load(tmp_path, f"{BASE}val_set_size: 4\ndo_causal_lm_eval: true\neval_table_size: 2\n"
                                "eval_causal_lm_metrics: [perplexity, f1]\n")
    assert cfg.evaluation.eval_causal_lm_metrics == ("f1",)
    assert any("`eval_table_size` ignored" in s for s in said) and any("`perplexity` taken out" in s for s in said)
    with pytest.raises(ConfigError, match=r"unknown key `eta_min` \(PyTorch's name for the cosine schedule's floor"):
        _load(tmp_path, f"{BASE}eta_min: 7e-7\n")


def test_attention_names_of_axolotls_examples(tmp_path: Path):
    """xformers (7 of Axolotl's examples) → sdpa; a hub kernel (gpt-oss's vllm-flash-attn3) → flash_attention_2;
    a name transformers lacks is refused with a did-you-mean instead of a traceback when the model loads."""
    cfg, said = _load(tmp_path, f"{BASE}attn_implementation: xformers\n")
    assert cfg.model.attn_implementation == "sdpa" and any("xformers" in s for s in said)
    cfg, _ = _load(tmp_path, f"{BASE}attn_implementation: kernels-community/vllm-flash-attn3\n")
    assert cfg.model.attn_implementation == "flash_attention_2"
    with pytest.raises(ConfigError, match=r"`flash_attention2` is not an attention transformers has \(did you mean"):
        _load(tmp_path, f"{BASE}attn_implementation: flash_attention2\n")
