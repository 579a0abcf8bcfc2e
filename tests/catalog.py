"""The catalogue of bad inputs: each one run through the real CLI must exit 2 with one short message.

tests/test_bad_inputs.py runs every case; scripts/errors_doc.py runs them too and writes docs/errors.md,
which the test keeps equal to what ft really says. A case is a config (BASE plus lines), files beside it,
the command line, and words the message must hold. `setup` names a prepared model folder when the case
needs one (see `prepare_setup`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ftproc

BASE = (
    "base_model: model\n"
    "datasets:\n"
    "  - path: data.jsonl\n"
    "    type: alpaca\n"
    "sequence_len: 128\nmicro_batch_size: 2\nmax_steps: 2\noutput_dir: out\nuse_tensorboard: false\n"
)
ROWS = [{"instruction": "Reverse the words.", "input": f"cat dog {i}", "output": f"{i} dog cat"} for i in range(12)]
CHAT = BASE.replace("    type: alpaca\n", "    type: chat_template\n").replace("data.jsonl", "chat.jsonl")
PAIRS = BASE.replace("    type: alpaca\n", "    type: preference\n").replace("data.jsonl", "pairs.jsonl") + "rl: dpo\nadapter: lora\n"
PAIR = {"prompt": "Say yes.", "chosen": " yes", "rejected": " no"}


@dataclass
class Case:
    name: str
    config: Optional[str] = BASE  # cfg.yml's text (None: no file written)
    expect: tuple[str, ...] = ()
    args: tuple[str, ...] = ("validate", "cfg.yml")
    files: dict[str, str] = field(default_factory=dict)
    setup: str = ""


def jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def with_ds(extra: str) -> str:
    """BASE with more keys in its one `datasets:` entry."""
    return BASE.replace("    type: alpaca\n", "    type: alpaca\n" + extra)


CASES = [
    # YAML
    Case("malformed YAML: an unclosed list", BASE + "lora_r: [8\n", ("cfg.yml:10", "malformed YAML", "not closed with `]`")),
    Case("misindented YAML", BASE.replace("    type: alpaca", "   type: alpaca"), ("cfg.yml:4", "indented differently")),
    Case("a tab in YAML", BASE + "\tlora_r: 8\n", ("cfg.yml:10", "a tab: indent with spaces")),
    Case("a line that is not key: value", BASE + "lora_r 8\nlora_alpha: 16\n", ("cfg.yml:11", "not `key: value`")),
    Case("an unclosed quote", BASE + 'wandb_project: "ft\n', ("malformed YAML", "quote that is not closed")),
    Case("the top level is a list", "- a\n- b\n", ("top level must be a mapping",)),
    Case("an empty config", "", ("the file is empty", "`base_model` and `datasets`")),
    Case("a key written twice", BASE + "lora_r: 8\nlora_r: 16\n", ("cfg.yml:11", "`lora_r` appears twice")),
    Case("an alias beside its name", BASE + "sequence_length: 512\n", ("mean the same thing",)),
    Case("the config file is missing", None, ("cfg.yml: no such file",)),
    Case("the config path is a folder", None, ("is a folder, not a YAML config file",), args=("validate", "out")),
    # keys and types
    Case("an unknown key", BASE + "lora_alpah: 16\n", ("cfg.yml:10", "unknown key `lora_alpah`", "did you mean `lora_alpha`")),
    Case("a format key written with its default value", with_ds("    roles_to_train: [assistant]\n"),
         ("`roles_to_train` is only read by `type: chat_template`", "this dataset has `type: alpaca`", "remove the key")),
    Case("an unknown key in a dataset", with_ds("    feild: text\n"), ("cfg.yml:5", "unknown key `feild`", "did you mean `field`")),
    Case("an unknown key in a user-defined format", BASE.replace("    type: alpaca\n", "    type:\n      field_instructon: q\n"),
         ("cfg.yml:5", "unknown key `field_instructon`", "did you mean `field_instruction`")),
    Case("text where a number belongs", BASE + "lora_r: eight\n", ("cfg.yml:10", "`lora_r`", "valid integer", "'eight'")),
    Case("a word where true/false belongs", BASE + "sample_packing: maybe\n", ("cfg.yml:10", "`sample_packing`", "valid boolean")),
    Case("an unknown adapter", BASE + "adapter: lorra\n", ("cfg.yml:10", "`adapter`", "unknown adapter `lorra` (did you mean `lora`?)")),
    Case("base_model is missing", BASE.replace("base_model: model\n", ""), ("`base_model` is required",)),
    Case("datasets is missing", "base_model: model\n", ("`datasets` is required",)),
    Case("datasets is empty", "base_model: model\ndatasets: []\n", ("`datasets` needs at least 1 entry",)),
    Case("a dataset without a path", "base_model: model\ndatasets:\n  - type: alpaca\n", ("`datasets[0].path` is required",)),
    Case("a negative learning rate", BASE + "learning_rate: -0.001\n", ("`learning_rate`", "greater than 0")),
    Case("micro_batch_size 0", BASE.replace("micro_batch_size: 2", "micro_batch_size: 0"), ("`micro_batch_size`", "greater than or equal to 1")),
    Case("sequence_len too small", BASE.replace("sequence_len: 128", "sequence_len: 4"), ("`sequence_len`", "greater than or equal to 8")),
    Case("a val_set_size between counts", BASE + "val_set_size: 1.5\n", ("`val_set_size` is a fraction below 1 or a whole row count",)),
    # names
    Case("an unknown dataset type", BASE.replace("type: alpaca", "type: alpacca"),
         ("cfg.yml:4", "unknown dataset type `alpacca`", "did you mean `alpaca`", "chat_template, chat_template.argilla, chat_template.default, chatml.ultra, completion")),
    Case("user_defined as a name", BASE.replace("type: alpaca", "type: user_defined"), ("write a user-defined format as a mapping",)),
    Case("an unknown optimizer", BASE + "optimizer: adam_w\n", ("cfg.yml:10", "unknown optimizer `adam_w`", "adamw_torch")),
    Case("an unknown scheduler", BASE + "lr_scheduler: cosin\n", ("unknown lr_scheduler `cosin`", "did you mean `cosine`")),
    Case("an unknown chat template", BASE + "chat_template: chatmll\n", ("`chat_template`", "did you mean `chatml`")),
    Case("an unknown FSDP option", BASE + "fsdp: full_shardd\n", ("unknown fsdp option `full_shardd`", "full_shard")),
    # templates and formats
    Case("an unknown placeholder", BASE.replace("    type: alpaca\n", "    type:\n      format: '{question}'\n"),
         ("cfg.yml:4", "unknown placeholder {question}", "{instruction}")),
    Case("an unclosed brace in a template", BASE.replace("    type: alpaca\n", "    type:\n      format: '{instruction'\n"),
         ("`format` is not a valid template", "write a literal brace")),
    Case("no_input_format using {input}", BASE.replace("    type: alpaca\n", "    type:\n      no_input_format: '{input}'\n"),
         ("`no_input_format` uses {input}",)),
    Case("a key the format never reads", with_ds("    roles_to_train: [assistant, user]\n"),
         ("cfg.yml:5", "`roles_to_train` is only read by `type: chat_template`", "`type: alpaca`")),
    Case("a format key without a type", "base_model: model\ndatasets:\n  - path: data.jsonl\n    field: text\n",
         ("`field` is only read by `type: completion`", "no `type:`")),
    # contradictions
    Case("4-bit with lora", BASE + "adapter: lora\nload_in_4bit: true\n", ("cfg.yml:10", "use `adapter: qlora`")),
    Case("qlora without 4-bit", BASE + "adapter: qlora\n", ("cfg.yml:10", "add `load_in_4bit: true`")),
    Case("8-bit and 4-bit", BASE + "adapter: qlora\nload_in_8bit: true\nload_in_4bit: true\n", ("both true", "keep one")),
    Case("a quantized base without an adapter", BASE + "load_in_8bit: true\n", ("cannot be fully fine-tuned", "add `adapter: lora`")),
    Case("lora_model_dir without an adapter", BASE + "lora_model_dir: adapter\n", ("`lora_model_dir` needs `adapter: lora`",)),
    Case("bf16 and fp16", BASE + "bf16: true\nfp16: true\n", ("`bf16` and `fp16`", "keep one")),
    Case("save_steps and saves_per_epoch", BASE + "save_steps: 10\nsaves_per_epoch: 2\n", ("`save_steps` and `saves_per_epoch`",)),
    Case("eval_steps and evals_per_epoch", BASE + "val_set_size: 0.1\neval_steps: 10\nevals_per_epoch: 2\n",
         ("`eval_steps` and `evals_per_epoch`",)),
    Case("warmup_steps and warmup_ratio", BASE + "warmup_steps: 10\nwarmup_ratio: 0.1\n", ("`warmup_steps` and `warmup_ratio`",)),
    Case("early stopping without evaluation data", BASE + "early_stopping_patience: 3\n", ("needs evaluation data",)),
    Case("test_datasets and val_set_size", BASE + "val_set_size: 0.1\ntest_datasets:\n  - path: data.jsonl\n    type: alpaca\n",
         ("give `test_datasets` or `val_set_size`, not both",)),
    Case("padding_free with pad_to_sequence_len", BASE + "padding_free: true\npad_to_sequence_len: true\n",
         ("`padding_free` and `pad_to_sequence_len`",)),
    Case("activation offloading without checkpointing", BASE + "activation_offloading: true\n", ("turn on `gradient_checkpointing`",)),
    # distributed
    Case("deepspeed and fsdp", BASE + "deepspeed: {zero_optimization: {stage: 2}}\nfsdp: [full_shard]\n", ("`deepspeed` and `fsdp`",)),
    Case("FSDP1 with an 8-bit base", BASE + "adapter: lora\nload_in_8bit: true\nfsdp: [full_shard]\nfsdp_config: {fsdp_version: 1}\n",
         ("an 8-bit base under FSDP needs FSDP2",)),
    Case("a DeepSpeed file that is not there", BASE + "deepspeed: zero2.json\n", ("cfg.yml:10", "DeepSpeed file `zero2.json` not found")),
    Case("a misspelt DeepSpeed key", BASE + "deepspeed:\n  ZeRO_optimization: {stage: 1}\n",
         ("cfg.yml:10", "`ZeRO_optimization`", "DeepSpeed would ignore it", "did you mean `zero_optimization`")),
    Case("an unknown DeepSpeed key", BASE + "deepspeed: ds.json\n", ("`speed_boost` in ds.json is not a DeepSpeed key", "remove it"),
         files={"ds.json": '{"zero_optimization": {"stage": 2}, "speed_boost": true}'}),
    Case("DeepSpeed JSON that does not parse", BASE + "deepspeed: ds.json\n", ("ds.json:3: not valid JSON",),
         files={"ds.json": '{\n  "zero_optimization": {"stage": 2},\n}\n'}),
    Case("a DeepSpeed file holding a list", BASE + "deepspeed: ds.json\n", ("a DeepSpeed config is a JSON object",), files={"ds.json": "[1, 2]"}),
    Case("a ZeRO stage that does not exist", BASE + "deepspeed: {zero_optimization: {stage: 4}}\n", ("stages 0, 1, 2 and 3",)),
    # the command line
    Case("a misspelt override", BASE, ("command line: unknown key `lerning_rate`", "did you mean `learning_rate`"),
         args=("validate", "cfg.yml", "--lerning-rate", "1e-4")),
    Case("an override of the wrong type", BASE, ("command line: `micro_batch_size`",), args=("validate", "cfg.yml", "--micro-batch-size", "lots")),
    Case("--set without a value", BASE, ("--set datasets.0.path: write --set key=value",), args=("validate", "cfg.yml", "--set", "datasets.0.path")),
    Case("--set past the end of a list", BASE, ("index 3 is past the end of the list",), args=("validate", "cfg.yml", "--set", "datasets.3.path=x")),
    Case("a stray word on the command line", BASE, ("unexpected argument `fast`",), args=("validate", "cfg.yml", "fast")),
    Case("a mistyped command", BASE, ("command line: No such command 'trian'", "Did you mean 'train'"), args=("trian", "cfg.yml")),
    Case("an unknown command", BASE, ("command line: No such command 'fly'", "ft --help"), args=("fly", "cfg.yml")),
    Case("a command without its config", BASE, ("command line: Missing argument 'config'", "ft train --help"), args=("train",)),
    Case("an unknown option before the command", BASE, ("command line: No such option: --fast",), args=("--fast", "train", "cfg.yml")),
    Case("an option without its value", BASE, ("command line: Option '--prompt' requires an argument",),
         args=("inference", "cfg.yml", "--prompt")),
    Case("an option of the wrong type", BASE, ("command line: Invalid value for '--max-new-tokens'",),
         args=("inference", "cfg.yml", "--prompt", "hi", "--max-new-tokens", "lots")),
    # data (ft preprocess reads the files and tokenizes)
    Case("a dataset file that is not there", BASE.replace("data.jsonl", "nope.jsonl"), ("dataset `nope.jsonl`: no such file",),
         args=("preprocess", "cfg.yml")),
    Case("data_files that are not there", with_ds("    data_files: [a.jsonl]\n").replace("path: data.jsonl", "path: folder"),
         ("data_files not found", "folder/a.jsonl"), args=("preprocess", "cfg.yml"), files={"folder/b.jsonl": jsonl(ROWS)}),
    Case("a folder without data files", BASE.replace("path: data.jsonl", "path: folder"), ("holds no .json, .jsonl",),
         args=("preprocess", "cfg.yml"), files={"folder/notes.md": "hi"}),
    Case("a broken JSONL row", BASE, ("data.jsonl:3: malformed JSON line",), args=("preprocess", "cfg.yml"),
         files={"data.jsonl": jsonl([ROWS[0], ROWS[1], '{"instruction": "x", "output": ', ROWS[2]])}),
    Case("a JSONL row that is not an object", BASE, ("data.jsonl:2: each line must be a JSON object, not list",),
         args=("preprocess", "cfg.yml"), files={"data.jsonl": jsonl([ROWS[0], "[1, 2]"])}),
    Case("a JSON list holding a non-object", BASE, ("item 1 of the JSON list is not an object",), args=("preprocess", "cfg.yml"),
         files={"data.jsonl": json.dumps([ROWS[0], 5])}),
    Case("a missing column", BASE, ("row 1", "missing column `output`"), args=("preprocess", "cfg.yml"),
         files={"data.jsonl": jsonl([ROWS[0], {"instruction": "x"}])}),
    Case("a column holding a number", BASE, ("row 0", "column `output` holds int, not text"), args=("preprocess", "cfg.yml"),
         files={"data.jsonl": jsonl([{"instruction": "x", "output": 5}])}),
    Case("an empty dataset file", BASE, ("has no rows",), args=("preprocess", "cfg.yml"), files={"data.jsonl": ""}),
    Case("every row longer than sequence_len", BASE.replace("sequence_len: 128", "sequence_len: 8"),
         ("all 12 rows were dropped", "12 longer than sequence_len 8"), args=("preprocess", "cfg.yml")),
    Case("a prompt longer than sequence_len, truncated", BASE.replace("sequence_len: 128", "sequence_len: 8") + "excess_length_strategy: truncate\n",
         ("the prompt alone is longer than sequence_len (8 tokens)", "raise sequence_len"), args=("preprocess", "cfg.yml")),
    Case("a preference row without its rejected answer", PAIRS, ("row 1", "missing column `rejected`"),
         args=("preprocess", "cfg.yml"), files={"pairs.jsonl": jsonl([PAIR, {"prompt": "Say yes.", "chosen": " yes"}])}),
    Case("a preference row with an empty answer", PAIRS, ("row 0", "the chosen answer (`chosen`) is empty"),
         args=("preprocess", "cfg.yml"), files={"pairs.jsonl": jsonl([{**PAIR, "chosen": " "}])}),
    Case("a preference prompt longer than sequence_len", PAIRS.replace("sequence_len: 128", "sequence_len: 16"),
         ("row 0", "the prompt alone is", "no room for an answer within sequence_len (16)"), args=("preprocess", "cfg.yml"),
         files={"pairs.jsonl": jsonl([{**PAIR, "prompt": "Say yes to the cat and the dog and the red sun and the blue moon."}])}),
    Case("preference pairs without rl", PAIRS.replace("rl: dpo\n", ""), ("holds preference pairs", "set `rl: dpo`"),
         files={"pairs.jsonl": jsonl([PAIR])}),
    Case("rl on supervised rows", BASE + "rl: dpo\nadapter: lora\n", ("`rl: dpo` trains on pairs of answers", "type: alpaca",
                                                                      "preference type")),
    Case("val_set_size taking every row", BASE + "val_set_size: 12\n", ("takes all 12 usable rows",), args=("preprocess", "cfg.yml")),
    Case("rows without a type or input_ids", BASE.replace("    type: alpaca\n", ""), ("no `type:` is set", "input_ids"),
         args=("preprocess", "cfg.yml")),
    Case("a file type ft cannot tell", BASE.replace("data.jsonl", "data.txt2"), ("unknown file type", "set `ds_type`"),
         args=("preprocess", "cfg.yml"), files={"data.txt2": "x"}),
    Case("a hub dataset while offline", BASE.replace("path: data.jsonl", "path: someone/dataset"), ("the hub is offline",),
         args=("preprocess", "cfg.yml")),
    Case("conversations that are not a list", CHAT, ("column `messages` must be a non-empty list of turns",), args=("preprocess", "cfg.yml"),
         files={"chat.jsonl": jsonl([{"messages": "hello"}])}),
    Case("a tokenizer without a chat template", CHAT.replace("base_model: model", "base_model: nochat"),
         ("set `chat_template:`",), args=("preprocess", "cfg.yml"), setup="nochat",
         files={"chat.jsonl": jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])}),
    # the model (ft train loads it)
    Case("a base_model folder without weights", BASE.replace("base_model: model", "base_model: noweights"),
         ("the model folder `noweights` lacks model weights",), args=("train", "cfg.yml"), setup="noweights"),
    Case("an empty base_model folder", BASE.replace("base_model: model", "base_model: emptymodel"),
         ("the model folder `emptymodel` is empty", "config.json", "model weights", "tokenizer files", "download"),
         args=("train", "cfg.yml"), setup="emptymodel"),
    Case("a base_model that is nowhere", BASE.replace("base_model: model", "base_model: nobody/nothing"),
         ("cannot load the tokenizer from `nobody/nothing`",), args=("train", "cfg.yml")),
    Case("target modules the model does not have", BASE + "adapter: lora\nlora_target_modules: [nonexistent_proj]\n",
         ("`nonexistent_proj` is not a module of this model", "its linear layers are", "q_proj"), args=("train", "cfg.yml")),
    Case("an FSDP layer class the model does not have", BASE + "fsdp: [full_shard, auto_wrap]\nfsdp_config:\n  transformer_layer_cls_to_wrap: GPTBlock\n",
         ("GPTBlock is not a layer of this model", "LlamaDecoderLayer"), args=("train", "cfg.yml")),
    Case("an adapter trained on another base", BASE + "adapter: lora\nlora_model_dir: other_adapter\n",
         ("was trained on", "shape differs"), args=("train", "cfg.yml"), setup="other_adapter"),
    Case("an adapter folder without an adapter", BASE + "adapter: lora\nlora_model_dir: empty\n",
         ("no adapter in empty",), args=("train", "cfg.yml"), files={"empty/notes.md": "x"}),
    Case("a resume_from_checkpoint that is not complete", BASE + "resume_from_checkpoint: out/checkpoint-2\n",
         ("not a complete checkpoint folder",), args=("train", "cfg.yml"), files={"out/checkpoint-2/trainer_state.json": "{}"}),
    Case("merge-lora before training", BASE + "adapter: lora\n", ("no adapter in out",), args=("merge-lora", "cfg.yml")),
    Case("inference before training", BASE, ("no trained model in out", "run `ft train` first"), args=("inference", "cfg.yml", "--prompt", "hi")),
    # what a parameter-efficient method cannot do (ft.model.methods), refused before anything loads
    Case("prompt tuning on packed rows", BASE + "adapter: prompt_tuning\nsample_packing: true\n",
         ("`adapter: prompt_tuning` puts virtual tokens before each row", "set `sample_packing: false`")),
    Case("prefix tuning under gradient checkpointing", BASE + "adapter: prefix_tuning\ngradient_checkpointing: true\n",
         ("`adapter: prefix_tuning`", "set `gradient_checkpointing: false`")),
    Case("a method that cannot train on a 4-bit base", BASE + "adapter: lokr\nload_in_4bit: true\n",
         ("`adapter: lokr` does not train on a 4-bit base", "remove `load_in_4bit`")),
    Case("LoRA+ with another method", BASE + "adapter: ia3\nloraplus_lr_ratio: 16\n",
         ("LoRA+ sets the learning rates of LoRA's matrices", "`adapter: ia3`")),
    Case("prompt tuning under FSDP", BASE + "adapter: prompt_tuning\nfsdp: [full_shard]\n",
         ("`adapter: prompt_tuning` is not supported with fsdp yet",)),
    Case("PiSSA on a 4-bit base", BASE + "adapter: qlora\nload_in_4bit: true\npeft_init_lora_weights: pissa\n",
         ("pissa starts LoRA from the base weights", "`adapter: lora` on a 16-bit base")),
    Case("LoftQ on a 4-bit base", BASE + "adapter: qlora\nload_in_4bit: true\npeft:\n  loftq_config:\n    loftq_bits: 4\n",
         ("LoftQ quantizes the base's weights itself", "`adapter: lora` on a 16-bit base")),
    Case("LoftQ with DoRA", BASE + "adapter: lora\npeft_use_dora: true\npeft:\n  loftq_config:\n    loftq_bits: 4\n",
         ("LoftQ is not supported with DoRA", "remove `peft_use_dora`")),
    Case("LoRA on parameters with another method", BASE + "adapter: lokr\nlora_target_parameters: [mlp.down_proj.weight]\n",
         ("it adds LoRA to parameters", "`adapter: lokr`")),
    Case("merging bottleneck adapters", BASE + "adapter: bottleneck\n", ("cannot be merged", "a nonlinearity sits between"),
         args=("merge-lora", "cfg.yml"), files={"out/bottleneck_config.json": '{}'}),
    Case("quantization-aware training with an adapter", BASE + "adapter: lora\nqat:\n  weight_dtype: int4\n",
         ("quantization-aware training trains the weights it fake-quantizes", "remove `adapter: lora`")),
    # benchmark evaluation (ft.evaluate)
    Case("bertscore without a model", BASE + "eval_causal_lm_metrics: [bertscore]\n",
         ("the metric `bertscore` needs `bertscore_model`",)),
    Case("a multiple-choice answer past the choices", BASE, ("row 0", "the answer `E` points past the 4 choices"),
         args=("eval", "cfg.yml", "--base-only", "--data", "mc.jsonl"),
         files={"mc.jsonl": jsonl([{"question": "Pick one.", "choices": ["a", "b", "c", "d"], "answer": "E"}])}),
    Case("a judge without two runs", BASE, ("--judge judges the two runs of --compare",), args=("eval", "cfg.yml", "--judge", "m")),
    Case("merging prompt tuning", BASE + "adapter: prompt_tuning\n", ("cannot be merged", "virtual tokens are inputs"),
         args=("merge-lora", "cfg.yml"), files={"out/adapter_config.json": '{"peft_type": "PROMPT_TUNING"}'}),
]


def prepare_setup(root: Path, tiny: Path, setup: str) -> None:
    """Model folders some cases need, made from the tiny model."""
    if setup == "nochat":
        shutil.copytree(tiny, root / "nochat")
        (root / "nochat/chat_template.jinja").unlink(missing_ok=True)
        config = root / "nochat/tokenizer_config.json"
        data = json.loads(config.read_text())
        data.pop("chat_template", None)
        config.write_text(json.dumps(data))
    elif setup == "emptymodel":
        (root / "emptymodel").mkdir()
    elif setup == "noweights":
        (root / "noweights").mkdir()
        for name in os.listdir(tiny):
            if not name.endswith(".safetensors"):
                shutil.copy(tiny / name, root / "noweights" / name)
    elif setup == "other_adapter":
        from peft import LoraConfig, get_peft_model

        from ft.tiny import build_model, build_tokenizer

        other = root / "other_base"
        tok = build_tokenizer()
        base = build_model("qwen2", tok, hidden_size=32, intermediate_size=64)
        base.save_pretrained(other)
        base.config._name_or_path = str(other)
        peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        peft.peft_config["default"].base_model_name_or_path = str(other)
        peft.save_pretrained(root / "other_adapter")


def run_case(case: Case, root: Path, tiny: Path) -> subprocess.CompletedProcess:
    """Lay out the case's files in `root` and run its command there, as a user would."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model").symlink_to(tiny)
    (root / "data.jsonl").write_text(jsonl(ROWS))
    if case.config is not None:
        (root / "cfg.yml").write_text(case.config)
    for name, text in case.files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    if case.args[:2] == ("validate", "out"):
        (root / "out").mkdir(exist_ok=True)
    if case.setup:
        prepare_setup(root, tiny, case.setup)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return ftproc.run(list(case.args), root, env, timeout=300)  # a process of its own (tests/ftproc.py)


def message(result: subprocess.CompletedProcess, root: Path) -> str:
    """The error line(s) ft printed, with the case's folder written as `.`."""
    text = result.stderr[result.stderr.find("ft: error: "):].strip()
    return text.replace(str(root.resolve()), ".").replace(str(root), ".")
