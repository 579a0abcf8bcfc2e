"""`data` section: the `datasets:` list and how rows become training sequences."""

from __future__ import annotations

import string
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from ft.config.base import Contradiction, Section
from ft.config.context import canonical, context_of

PLACEHOLDERS = ("instruction", "input", "system")


def placeholders(template: str) -> list[str]:
    """The `{name}` fields of a str.format template."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class UserDefinedFormat(Section):
    """The dict form of a dataset `type:` (Axolotl's user-defined prompt format).

    A row renders as `system_format` (when there is a system text) + the prompt + the output, where the
    prompt is `format` or, when the input field is absent or empty, `no_input_format`. Only the output
    (and EOS) is trained when `train_on_inputs: false`.
    """

    system_prompt: str = Field("", description="System text used when the row has no system field.")
    system_format: str = Field("{system}", description="How the system text renders; placeholder {system}.")
    field_system: Optional[str] = Field(None, description="Column holding a per-row system text (wins over system_prompt).")
    field_instruction: str = Field("instruction", description="Column holding the instruction.")
    field_input: Optional[str] = Field("input", description="Column holding the optional input.")
    field_output: str = Field("output", description="Column holding the answer (the trained part).")
    format: Optional[str] = Field(
        None,
        description="Prompt template with {instruction}, {input}, {system}. Default: "
        "'{instruction}\\n{input}\\n' with input, '{instruction}\\n' without.",
    )
    no_input_format: Optional[str] = Field(
        None, description="Prompt template for rows whose input is absent or empty. Default: derived from format."
    )

    @model_validator(mode="after")
    def _known_placeholders(self) -> "UserDefinedFormat":
        for key in ("format", "no_input_format", "system_format"):
            template = getattr(self, key)
            if template is None:
                continue
            try:
                names = placeholders(template)
            except ValueError as exc:
                raise ValueError(f"`{key}` is not a valid template ({exc}); write a literal brace as {{{{ or }}}}")
            for name in names:
                if name not in PLACEHOLDERS:
                    valid = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                    raise ValueError(f"`{key}` uses unknown placeholder {{{name}}}; valid: {valid}")
        if self.no_input_format and "input" in placeholders(self.no_input_format):
            raise ValueError("`no_input_format` uses {input}, but it renders rows that have no input")
        return self


def _type_tag(value: Any) -> str:
    return "user_defined" if isinstance(value, (dict, UserDefinedFormat)) else "name"


FormatType = Annotated[
    Union[Annotated[str, Tag("name")], Annotated[UserDefinedFormat, Tag("user_defined")]],
    Discriminator(_type_tag),
]


class DatasetConfig(Section):
    path: str = Field(..., description="Local file or folder, or a hub dataset id.")
    type: Optional[FormatType] = Field(
        None,
        description="Prompt format: a registered name (alpaca, chat_template, completion, input_output) or a "
        "user-defined dict. Unset: rows must already hold input_ids (and labels).",
    )
    split: str = Field("train", description="Split to read.")
    name: Optional[str] = Field(None, description="Hub dataset configuration name.")
    data_files: Optional[tuple[str, ...]] = Field(None, description="Files inside `path` to read.")
    ds_type: Optional[Literal["json", "csv", "parquet", "arrow", "text"]] = Field(
        None, description="File type, when the extension does not say it."
    )
    revision: Optional[str] = Field(None, description="Hub dataset revision.")
    field: Optional[str] = Field(None, description="`completion`: the column holding the text (default `text`).")
    field_messages: Optional[str] = Field(
        None, description="`chat_template`: the column holding the turns (default: messages or conversations)."
    )
    message_field_role: Optional[str] = Field(
        None, description="`chat_template`: the key of a turn's role (default: role, or from in ShareGPT rows)."
    )
    message_field_content: Optional[str] = Field(
        None, description="`chat_template`: the key of a turn's text (default: content, or value in ShareGPT rows)."
    )
    field_thinking: Optional[str] = Field(
        None, description="`chat_template`: the key of a turn's reasoning text (default: reasoning_content), handed to "
        "the chat template under template_thinking_key and trained with the turn.")
    template_thinking_key: Optional[str] = Field(
        None, description="`chat_template`: the message key the chat template reads reasoning from (default: "
        "reasoning_content; gpt-oss's template reads `thinking`).")
    roles: Optional[dict[str, tuple[str, ...]]] = Field(
        None, description="`chat_template`: the role names of the rows for each role of the template, e.g. {user: "
        "[human, user], assistant: [gpt, assistant]}; a role not listed is kept as written.")
    drop_system_message: bool = Field(False, description="`chat_template`: leave the rows' system turns out.")
    field_chosen: Optional[str] = Field(None, description="Preference rows (`rl:`): the column of the chosen answer "
                                        "(default `chosen`).")
    field_rejected: Optional[str] = Field(None, description="Preference rows (`rl:`): the column of the rejected answer "
                                          "(default `rejected`).")
    roles_to_train: tuple[str, ...] = Field(("assistant",), description="`chat_template`: roles whose turns are trained.")
    train_on_eos: Literal["turn", "last", "all", "none"] = Field(
        "turn",
        description="`chat_template`: which end-of-turn tokens are trained: those of trained turns, the last "
        "one, all, or none.",
    )
    logprobs_field: Optional[str] = Field(
        None, description="Distillation from log-probabilities the rows carry (Axolotl's kd format): the column "
        "holding, for each token of the row (aligned to its end), the teacher's top tokens as {token: 'token_id:N', "
        "logprob: x}. No teacher_model is loaded; kd_top_k of them are used per position.")
    temperature: Optional[float] = Field(
        None, gt=0, description="With logprobs_field: the temperature the log-probabilities were made at (default 1); "
        "it must equal kd_temperature.")
    step_separator: Optional[str] = Field(None, description="`stepwise_supervised`: the text written after each step "
                                          "(default a newline); the step's label sits on its last token.")
    max_completion_length: Optional[int] = Field(None, ge=1, description="`stepwise_supervised`: the steps' tokens are "
                                                 "cut to this many.")
    train_on_last_step_only: bool = Field(False, description="`stepwise_supervised`: only the last step's label trains.")
    chat_template: Optional[str] = Field(None, description="`chat_template`: a named template for this dataset.")
    chat_template_jinja: Optional[str] = Field(None, description="`chat_template`: a Jinja template for this dataset.")

    @field_validator("data_files", "roles_to_train", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("roles", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, v: object) -> object:
        return {k: [n] if isinstance(n, str) else n for k, n in v.items()} if isinstance(v, dict) else v

    @field_validator("roles")
    @classmethod
    def _each_name_once(cls, v: Optional[dict[str, tuple[str, ...]]]) -> Optional[dict[str, tuple[str, ...]]]:
        seen: dict[str, str] = {}
        for role, names in (v or {}).items():
            for name in names:
                if name in seen and seen[name] != role:
                    raise ValueError(f"`{name}` is listed under both `{seen[name]}` and `{role}`; keep one")
                seen[name] = role
        return v

    @field_validator("type")
    @classmethod
    def _registered_format(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, str):
            if v == "user_defined":
                raise ValueError("write a user-defined format as a mapping of field_instruction, format, ...")
            try:
                return canonical(info, "formats", v)
            except ValueError:
                from ft.config.axolotl_values import dataset_type_feature

                feature = dataset_type_feature(v)
                if feature:  # one of Axolotl's types: said by name, not as a typo
                    raise ValueError(f"Axolotl's dataset type `{v}` ({feature}) is not supported by ft yet; use one of ft's "
                                     "formats (alpaca, chat_template, completion, input_output, user_defined, ...)") from None
                context = context_of(info)
                if python_function(v, context.format_reads if context else ()):  # a Python transform (rl: grpo's
                    return v  # prompts), imported when the data is prepared
                raise
        return v

    @field_validator("chat_template")
    @classmethod
    def _registered_template(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        return canonical(info, "chat_templates", v) if v is not None else v

    @model_validator(mode="after")
    def _keys_the_format_reads(self, info: ValidationInfo) -> "DatasetConfig":
        """A format-specific key the entry's format never reads is a mistake, not a no-op: whether the key was
        written decides, not its value (`roles_to_train: [assistant]`, the default, on alpaca rows too)."""
        context = context_of(info)
        if context is None:
            return self
        name = self.type if isinstance(self.type, str) else "user_defined" if self.type else None
        reads = context.format_reads.get(name, ()) if name else ()
        for key in FORMAT_KEYS:
            if key in reads or key not in self.model_fields_set:
                continue
            readers = " or ".join(f"`type: {n}`" for n, keys in context.format_reads.items() if key in keys)
            this = f"`type: {name}`" if isinstance(self.type, str) else "a user-defined `type:`" if self.type else "no `type:`"
            raise Contradiction(key, f"`{key}` is only read by {readers}; this dataset has {this}: remove the key")
        return self


def python_function(name: str, formats: Any) -> bool:
    """`module.function`, a dotted path of Python names whose first part begins none of the `formats`' names (a
    misspelt `chat_template.argila` stays a typo): Axolotl's and TRL's Python dataset transforms."""
    import re

    first = re.split(r"[.:]", name)[0]
    return (re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", name) is not None
            and all(re.split(r"[.:]", known)[0] != first for known in formats))


# The keys of a `datasets:` entry that only some formats read (each format declares its own in `reads`).
FORMAT_KEYS = ("field", "field_messages", "message_field_role", "message_field_content", "roles_to_train", "roles",
               "drop_system_message", "field_thinking", "template_thinking_key",
               "train_on_eos", "chat_template", "chat_template_jinja", "field_chosen", "field_rejected", "step_separator",
               "max_completion_length", "train_on_last_step_only")


class DataConfig(Section):
    datasets: tuple[DatasetConfig, ...] = Field(..., min_length=1, description="Training datasets, concatenated.")
    test_datasets: tuple[DatasetConfig, ...] = Field((), description="Evaluation datasets (instead of val_set_size).")
    val_set_size: float = Field(
        0.0, ge=0, description="Held-out share of the training rows for evaluation: a fraction < 1 or a row count."
    )
    dataset_prepared_path: Optional[str] = Field(
        None, description="Folder of the prepared-dataset cache (default: <output_dir>/prepared)."
    )
    sequence_len: int = Field(2048, ge=8, description="Maximum tokens per training sequence (alias: sequence_length).")
    train_on_inputs: bool = Field(
        False, description="Take the loss on the prompt too. false: loss on the output (and its EOS) only."
    )
    curriculum_sampling: bool = Field(
        False, description="Train on the rows in the order the datasets give them, every epoch: no shuffling of the "
        "merged datasets nor of each epoch's order (Axolotl's key).",
    )
    min_sample_len: Optional[int] = Field(
        None, ge=1, description="Drop rows (or the chunks of a split text) with fewer tokens than this (Axolotl's key). "
        "Unset: rows are kept whatever their length, if they have a token to train on.",
    )
    excess_length_strategy: Literal["drop", "truncate"] = Field(
        "drop", description="What to do with rows longer than sequence_len."
    )
    sample_packing: bool = Field(False, description="Pack several rows into each sequence of sequence_len tokens.")
    eval_sample_packing: Optional[bool] = Field(None, description="Pack evaluation rows too (default: sample_packing).")
    pad_to_sequence_len: bool = Field(False, description="Pad every batch to sequence_len (steady memory use).")
    padding_free: Optional[bool] = Field(
        None,
        description="Unpacked batches: lay a micro batch's rows end to end without padding, each row attending "
        "only to itself. Default: on with a CUDA GPU (no compute spent on padding), off on CPU.",
    )
    shuffle_merged_datasets: bool = Field(True, description="Shuffle the concatenated datasets with the seed.")
    dataset_exact_deduplication: bool = Field(
        False, description="Keep one of each set of identical rows (the same tokens and labels; a preference pair as "
        "a whole), and leave out test rows that are also training rows.")
    dataset_processes: Optional[int] = Field(None, ge=1, description="Worker processes for tokenization.")

    @model_validator(mode="after")
    def _count_or_fraction(self) -> "DataConfig":
        if self.val_set_size >= 1 and self.val_set_size != int(self.val_set_size):
            raise Contradiction("val_set_size", "`val_set_size` is a fraction below 1 or a whole row count")
        if self.test_datasets and self.val_set_size:
            raise Contradiction("val_set_size", "give `test_datasets` or `val_set_size`, not both")
        if self.padding_free and self.pad_to_sequence_len:
            raise Contradiction("padding_free", "`padding_free` and `pad_to_sequence_len` ask for opposite batches; keep one")
        return self
