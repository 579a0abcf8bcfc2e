"""Property-based fuzzing of the config loader and the command-line overrides (hypothesis): any YAML
document, any text, any command line gives a valid config or a ConfigError, never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ft.cli import parse_overrides
from ft.commands.config import load
from ft.config.load import all_keys
from ft.errors import ConfigError

KEYS = all_keys() + ["datasets", "type", "path", "field_instruction", "format", "fsdp_config", "bnb_config_kwargs"]
names = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(), st.text(max_size=16),
                    st.sampled_from(["alpaca", "chat_template", "lora", "qlora", "cosine", "adamw_torch", "{instruction}", "auto"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
                      max_leaves=12)
documents = st.dictionaries(names, values, max_size=10)
# near-valid configs: a base and a dataset, then anything
near = st.builds(lambda extra, ds: {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca", **ds}], **extra},
                 st.dictionaries(st.sampled_from(all_keys()), values, max_size=6), st.dictionaries(names, values, max_size=3))
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loads(text: str, argv: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yml"
        path.write_text(text, encoding="utf-8")
        try:
            load(path, parse_overrides(argv or [], None))
        except ConfigError as exc:
            assert str(exc).strip(), "an empty message"


@FUZZ
@given(documents)
def test_any_yaml_mapping_gives_a_config_or_a_clean_error(doc):
    loads(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(near)
def test_near_valid_configs_give_a_config_or_a_clean_error(doc):
    loads(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.text(max_size=300))
def test_any_text_gives_a_config_or_a_clean_error(text):
    loads(text)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(["--" + k.replace("_", "-") for k in all_keys()] + ["--set", "--"]),
                          st.text(max_size=20)), max_size=6))
def test_any_command_line_gives_a_config_or_a_clean_error(argv):
    loads("base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n", argv)
