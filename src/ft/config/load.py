"""Read a YAML file (with line numbers), apply aliases and command-line overrides, validate once.

The YAML is flat, as Axolotl users write it; each key belongs to exactly one section of `FtConfig`.
Every mistake becomes a `ConfigError` naming the file, line, key and, where one exists, the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, get_args

import yaml
from pydantic import ValidationError

from ft.config import axolotl, axolotl_values
from ft.config.base import Contradiction
from ft.config.context import ValidationContext
from ft.config.schema import FtConfig
from ft.errors import ConfigError
from ft.registry import did_you_mean

# Section name in FtConfig → the flat YAML keys it owns.
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(field.annotation.model_fields)  # type: ignore[union-attr]
    for name, field in FtConfig.model_fields.items()
}
KEY_SECTION: dict[str, str] = {key: section for section, keys in SECTION_KEYS.items() for key in keys}
assert len(KEY_SECTION) == sum(len(k) for k in SECTION_KEYS.values()), "a YAML key is owned by two sections"

# ft's keys that take null as a value; for the others, `key:` with nothing after it means "not set".
NULLABLE = frozenset(
    key for section in FtConfig.model_fields.values() for key, field in section.annotation.model_fields.items()  # type: ignore[union-attr]
    if field.annotation is Any or type(None) in get_args(field.annotation)
)

# Other spellings of a key → its ft name.
ALIASES = {"sequence_length": "sequence_len", "max_seq_length": "sequence_len", "max_packed_sequence_len": "sequence_len",
           "model_config": "model_config_overrides", "evaluation_strategy": "eval_strategy",
           # ReLoRA's keys before Axolotl named them jagged restarts
           "relora_steps": "jagged_restart_steps", "relora_warmup_steps": "jagged_restart_warmup_steps",
           "relora_anneal_steps": "jagged_restart_anneal_steps",
           "sequence_parallel_degree": "context_parallel_size"}  # Axolotl's name before context_parallel_size
# Axolotl's pure-precision keys refine ft's mixed-precision ones: `bf16: true` with `bfloat16: true` is pure bf16.
REFINES = ("bfloat16", "float16")
# Keys found in Axolotl configs that ft accepts and ignores, with the reason shown as a warning.
IGNORED = {"strict": "ft always rejects unknown keys", "debug": "use `ft --debug` for tracebacks"}
# Keys of the peers that ft does not offer yet, beyond Axolotl's vocabulary (config/axolotl.py answers those):
# said so, instead of a did-you-mean to an unrelated key.
NOT_SUPPORTED_YET = {
    "unsloth_lora_mlp": "Unsloth's kernels are not part of ft",
}
# Keys that are no one's schema key but are seen in the wild (Axolotl's examples hold them; Axolotl ignores them):
# the unknown-key message says what ft has instead of a did-you-mean.
UNKNOWN_HINTS = {
    "eta_min": "PyTorch's name for the cosine schedule's floor, which Axolotl ignores; ft's is `cosine_min_lr_ratio`, "
               "a share of learning_rate",
}
# `bnb_config_kwargs:` (Axolotl) holds keys that ft takes at the top level.
NESTED_FLAT = ("bnb_config_kwargs",)

Path_ = tuple[Any, ...]


def all_keys() -> list[str]:
    return sorted(KEY_SECTION) + sorted(ALIASES)


def load_config(
    path: str | Path,
    overrides: Sequence[tuple[str, Any]] = (),
    *,
    context: Optional[ValidationContext],
    warn: Any = None,
) -> FtConfig:
    """Load, override and validate a config file.

    `overrides` are (dotted key, value) pairs from the command line; integers in the dotted key index
    lists (`datasets.0.path`). `context` holds the registries names are checked against (see
    config/context.py; `ft.commands.config.load` passes them). `warn` receives warnings (default: stderr).
    """
    path = Path(path)
    raw, lines = read_yaml(path)
    origins: dict[str, str] = {}
    for dotted, value in overrides:
        apply_override(raw, dotted, value)
        origins[ALIASES.get(dotted.split(".")[0], dotted.split(".")[0])] = "command line"
    flat, renamed = normalize(raw, path, lines, origins, warn)
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTION_KEYS}
    for key, value in flat.items():
        sections[KEY_SECTION[key]][key] = value
    try:
        present = {name: values for name, values in sections.items() if values or name in ("model", "data")}
        return FtConfig.model_validate(present, context=context)
    except ValidationError as exc:
        raise ConfigError(explain(exc, path, lines, renamed, origins)) from None


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Path_, int]]:
    """The mapping in `path` and the 1-based line of every key in it, by key path."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file; give the path of a YAML config")
    if not path.is_file():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        if "end of stream" in problem or "<stream end>" in problem:  # where the unclosed thing opened
            mark = getattr(exc, "context_mark", None) or mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML: {yaml_fix(problem)} (YAML says: {problem})") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; it needs at least `base_model` and `datasets`")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping of `key: value` lines")
    lines: dict[Path_, int] = {}
    _walk(node, (), lines, path)
    return data, lines


# PyYAML's problem → what to do about it.
YAML_FIXES = (
    ("expected <block end>", "this line is indented differently from the lines it belongs with; give the keys of "
     "one mapping (one `- ` list item) the same indentation"),
    ("mapping values are not allowed here", "a `key: value` where none can start: check this line's indentation, or "
     "quote a value that holds ': '"),
    ("found character '\\t'", "a tab: indent with spaces"),
    ("could not find expected ':'", "a line that is not `key: value` (a missing colon, or a stray word)"),
    ("expected ',' or ']'", "a `[` list that is not closed with `]`"),
    ("expected ',' or '}'", "a `{` mapping that is not closed with `}`"),
    ("found unexpected end of stream", "a quote that is not closed"),
    ("found undefined alias", "`*name` refers to an anchor `&name` that is not defined"),
    ("found unhashable key", "a key that is a list or a mapping; a key is a plain word"),
)


def yaml_fix(problem: str) -> str:
    return next((fix for start, fix in YAML_FIXES if problem.startswith(start)), "see the line named")


def _walk(node: yaml.Node, prefix: Path_, lines: dict[Path_, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                where = ".".join(map(str, prefix + (key,)))
                raise ConfigError(f"{path}:{line}: `{where}` appears twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
            lines[prefix + (key,)] = line
            _walk(value_node, prefix + (key,), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _walk(item, prefix + (i,), lines, path)


def parse_value(text: str) -> Any:
    """A command-line value, read as YAML: `true` → True, `2` → 2, `[a, b]` → list, `1e-4` stays text."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts: list[Any] = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    parts[0] = ALIASES.get(parts[0], parts[0])
    target: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(target, list) and isinstance(part, int) and part >= len(target):
            raise ConfigError(f"command line (--set {dotted}): index {part} is past the end of the list")
        try:
            if isinstance(target, dict) and part not in target:
                target[part] = [] if isinstance(nxt, int) else {}
            target = target[part]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"command line (--set {dotted}): `{part}` does not exist in the config") from None
    last = parts[-1]
    if isinstance(target, list) and isinstance(last, int):
        if last >= len(target):
            raise ConfigError(f"command line (--set {dotted}): index {last} is past the end of the list")
        target[last] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise ConfigError(f"command line (--set {dotted}): cannot set `{last}` inside a {type(target).__name__}")


def normalize(
    raw: dict[str, Any], path: Path, lines: dict[Path_, int], origins: dict[str, str], warn: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """Resolve aliases, drop ignored keys, unfold nested-flat blocks; reject unknown keys.

    Returns the flat mapping of ft names and, for each renamed key, the name the user wrote.
    """
    warn = warn or _stderr
    flat: dict[str, Any] = {}
    written: dict[str, str] = {}
    items = list(raw.items())
    for block in NESTED_FLAT:
        if block in raw and isinstance(raw[block], dict):
            items = [(k, v) for k, v in items if k != block] + [(k, v) for k, v in raw[block].items()]
    items = _ray_workers(items, path, warn)
    empty: list[str] = []
    for key, value in items:
        where = _where(path, lines, origins, (key,))
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key `{key}` must be text")
        if key in IGNORED:
            warn(f"{where}: `{key}` is ignored: {IGNORED[key]}")
            continue
        name = ALIASES.get(key, key)
        if name in NOT_SUPPORTED_YET:
            raise ConfigError(f"{where}: `{key}`: {NOT_SUPPORTED_YET[name]}")
        axolotl_key = name not in KEY_SECTION and axolotl.answer(name) is not None
        if not axolotl_key and name not in KEY_SECTION:
            hint = f" ({UNKNOWN_HINTS[key]})" if key in UNKNOWN_HINTS else did_you_mean(key, all_keys() + sorted(axolotl.VOCABULARY))
            raise ConfigError(f"{where}: unknown key `{key}`{hint}")
        if not axolotl_key and value is None and name not in NULLABLE:  # `key:` alone: not set, as Axolotl reads it
            empty.append(key)
            continue
        if name in ("datasets", "test_datasets") and isinstance(value, list):
            value = [_dataset_entry(entry, path, lines, origins, (key, i), warn) for i, entry in enumerate(value)]
        try:  # Axolotl's key (config/axolotl.py), or Axolotl's value of a key ft has (config/axolotl_values.py)
            mapped, said = axolotl.translate(name, value) if axolotl_key else axolotl_values.top_level(name, value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if said:
            warn(f"{where}: from Axolotl: {said}")
        elif axolotl_key:
            empty.append(key)
        for ft_key, ft_value in mapped.items():
            _put(flat, written, ft_key, ft_value, key, where)
    if empty:
        warn(f"{path}: left empty, so not set: {', '.join(f'`{k}`' for k in empty)}")
    _template_variables_of_trl(flat, path, warn)
    _fsdp2_for_integer_weights(flat, path, warn)
    return flat, {name: key for name, key in written.items() if name != key}


def _ray_workers(items: list[tuple[Any, Any]], path: Path, warn: Any) -> list[tuple[Any, Any]]:
    """Axolotl's `use_ray: true` trains on `ray_num_workers` Ray workers of one GPU each: ft launches that many
    processes itself (`num_processes`), on this machine; said once. Without it the Ray keys are ignored."""
    given = dict(items)
    if given.get("use_ray") is not True:
        return items
    resources = given.get("resources_per_worker")
    if resources not in (None, {}, {"GPU": 1}, {"gpu": 1}):
        raise ConfigError(f"{path}: Axolotl's `resources_per_worker: {resources}` (Ray workers of other than one GPU) "
                          "is not supported by ft; ft runs one process per GPU: remove it")
    workers = given.get("ray_num_workers") or 1
    ray = ("use_ray", "ray_num_workers", "resources_per_worker", "ray_run_name")
    warn(f"{path}: from Axolotl: `use_ray: true` with `ray_num_workers: {workers}` → `num_processes: {workers}`: ft "
         "launches that many processes on this machine itself, no Ray cluster (several machines: ft train "
         "--num-machines)")
    return [(k, v) for k, v in items if k not in ray] + [("num_processes", workers)]


def _template_variables_of_trl(flat: dict[str, Any], path: Path, warn: Any) -> None:
    """Axolotl's `trl.chat_template_kwargs` render the prompts: ft's `chat_template_kwargs`, which does that."""
    trl = flat.get("trl")
    inner = trl.get("chat_template_kwargs") if isinstance(trl, dict) else None
    if not inner:
        return
    if flat.get("chat_template_kwargs") not in (None, inner):
        raise ConfigError(f"{path}: `trl.chat_template_kwargs` and `chat_template_kwargs` differ; keep one")
    flat["chat_template_kwargs"] = inner
    warn(f"{path}: from Axolotl: `trl.chat_template_kwargs` → `chat_template_kwargs` (the tokenizer's chat template "
         "renders every prompt with them)")


def _fsdp2_for_integer_weights(flat: dict[str, Any], path: Path, warn: Any) -> None:
    """An fsdp_config that names no version but sets keys only FSDP1 reads is FSDP1 (Axolotl's reading, see
    config/distributed.py); with an 8-bit base or quantized experts, which only FSDP2 runs (FSDP1 flattens each
    unit's parameters into one buffer of one dtype, which integer weights and their scales cannot join), it is
    FSDP2 instead, the FSDP1-only keys set aside (each says what FSDP2 does instead), said once."""
    from ft.config.distributed import FSDP1_KEYS

    settings = flat.get("fsdp_config")
    if not isinstance(settings, dict) or not (flat.get("load_in_8bit") or flat.get("quantize_moe_experts")):
        return
    named = {(k if str(k).startswith("fsdp_") else f"fsdp_{k}"): k for k in settings}
    fsdp1 = [written for name, written in named.items() if name in FSDP1_KEYS and settings[written] is not None]
    if "fsdp_version" in named or not fsdp1:
        return
    for key in fsdp1:
        settings.pop(key)
    what = "an 8-bit base" if flat.get("load_in_8bit") else "quantized experts (`quantize_moe_experts`)"
    warn(f"{path}: from Axolotl: this fsdp_config (FSDP1, by its keys {', '.join(f'`{k}`' for k in fsdp1)}) runs as "
         f"FSDP2: FSDP1 cannot shard {what}; FSDP2 does what those keys ask on its own")
    settings["fsdp_version"] = 2


def _dataset_entry(entry: Any, path: Path, lines: dict[Path_, int], origins: dict[str, str], loc: Path_, warn: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    try:
        entry, said = axolotl_values.dataset_entry(entry)
    except ValueError as exc:
        raise ConfigError(f"{_where(path, lines, origins, loc)}: {exc}") from None
    for words in said:
        warn(f"{_where(path, lines, origins, loc)}: from Axolotl: {words}")
    return entry


def _put(flat: dict[str, Any], written: dict[str, str], name: str, value: Any, key: str, where: str) -> None:
    """flat[name] = value, once; a mapping merges into one given by another key (fsdp_version → fsdp_config)."""
    if name in flat and flat[name] is None:
        del flat[name]
    if name in flat and isinstance(flat[name], bool) and key in REFINES:
        flat[name], written[name] = value, key  # `bf16: true` + Axolotl's `bfloat16: true`: pure bf16
        return
    if name in flat and isinstance(value, bool) and written.get(name) in REFINES:
        return
    if name in flat and isinstance(flat[name], dict) and isinstance(value, dict):
        clash = set(flat[name]) & set(value)
        if not clash:
            flat[name] = {**flat[name], **value}
            return
    if name in flat and flat[name] == value and type(flat[name]) is type(value):
        return  # said twice alike (`fp16: true` and Axolotl's `float16: true`)
    if name in flat:
        raise ConfigError(f"{where}: `{key}` and `{written[name]}` mean the same thing; keep one")
    flat[name] = value
    written[name] = key


def explain(exc: ValidationError, path: Path, lines: dict[Path_, int], renamed: dict[str, str], origins: dict[str, str]) -> str:
    """One line per pydantic error (at most three), each naming where, which key, and what is wrong."""
    messages = []
    errors = exc.errors()
    # A list whose only item failed also reports "too short"; the item's own error is the one to show.
    failed = [e["loc"] for e in errors if e["type"] != "too_short"]
    errors = [e for e in errors if not (e["type"] == "too_short" and any(f[: len(e["loc"])] == e["loc"] for f in failed))]
    for err in errors:
        loc = list(err["loc"])
        ctx = err.get("ctx") or {}
        error = ctx.get("error")
        if loc and loc[0] in SECTION_KEYS:
            loc = loc[1:]
        if isinstance(error, Contradiction):
            loc.append(error.key)
        loc = [p for i, p in enumerate(loc) if not (i and loc[i - 1] == "type" and p in ("name", "user_defined"))]
        loc = [p for p in loc if not _is_union_member(p)]
        if err["type"] == "unknown_key":
            loc.append(ctx["key"])
        if loc and loc[0] in renamed:
            loc[0] = renamed[loc[0]]
        where = _where(path, lines, origins, tuple(loc))
        key = _dotted(loc)
        msg = str(error) if error is not None else err["msg"].replace("a valid tuple", "a list").replace("Tuple should", "The list should")
        if err["type"] == "missing":
            messages.append(f"{where}: `{key}` is required")
            continue
        if err["type"] == "too_short":
            messages.append(f"{where}: `{key}` needs at least {ctx.get('min_length', 1)} entry; it is empty")
            continue
        if err["type"] not in ("value_error", "unknown_key") and _is_scalar(err.get("input")):
            msg += f" (got {err['input']!r})"
        line = f"{where}: `{key}`: {msg}" if key and err["type"] != "unknown_key" else f"{where}: {msg}"
        union = next((i for i, m in enumerate(messages) if m.startswith(f"{where}: `{key}`: Input should be ")), None)
        if union is not None and msg.startswith("Input should be "):  # one key, several accepted types
            head, got, value = messages[union].partition(" (got ")
            messages[union] = f"{head} or {msg.removeprefix('Input should be ').split(' (got ')[0]}{got}{value}"
            continue
        messages.append(line)
    more = len(messages) - 3
    return "\n".join(messages[:3]) + (f"\n(and {more} more)" if more > 0 else "")


def _is_union_member(part: Any) -> bool:
    """pydantic names the member of a union that failed ("str", "dict[str,any]"): not a key of the file."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _where(path: Path, lines: dict[Path_, int], origins: dict[str, str], loc: tuple[Any, ...]) -> str:
    if loc and loc[0] in origins:
        return origins[loc[0]]
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f"{path}:{lines[loc[:end]]}"
    return str(path)


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _stderr(message: str) -> None:
    import sys

    print(f"ft: warning: {message}", file=sys.stderr)
