"""Golden tests: exact rendered text and exact label masks for every prompt format."""

from __future__ import annotations

import pytest

from ft.config.data import UserDefinedFormat
from ft.data.formats import Segment
from ft.data.labels import IGNORE
from ft.errors import DataError
from helpers import render, tokenize, trained_text

PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"

ROW = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
ROW_NO_INPUT = {"instruction": "Name a colour.", "input": "", "output": "red"}


def test_alpaca_with_and_without_input(tiny_tokenizer):
    with_input, without = render([ROW, ROW_NO_INPUT], tiny_tokenizer)
    assert with_input == [
        Segment(PREAMBLE_INPUT + "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n", False),
        Segment("5", True),
    ]
    assert without == [Segment(PREAMBLE + "### Instruction:\nName a colour.\n\n### Response:\n", False), Segment("red", True)]


def test_output_only_mask_is_the_output_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    out = tokenize([ROW], tok)
    ids, labels = out.input_ids[0], out.labels[0]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # exactly one BOS
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id  # EOS appended and trained
    n_trained = sum(l != IGNORE for l in labels)
    out_ids = tok("5", add_special_tokens=False)["input_ids"]
    assert n_trained == len(out_ids) + 1
    assert labels[-1 - len(out_ids) : -1] == out_ids
    assert all(l == IGNORE for l in labels[: -1 - len(out_ids)])
    assert ids == tok(render([ROW], tok)[0][0].text + "5</s>")["input_ids"]  # same tokens as the whole text


def test_train_on_inputs_trains_everything_but_bos(tiny_tokenizer):
    out = tokenize([ROW], tiny_tokenizer, train_on_inputs=True)
    assert out.labels[0][0] == IGNORE
    assert out.labels[0][1:] == out.input_ids[0][1:]


# The seed configs' user-defined formats, as their YAML resolves (see shared/seed-configs/README.md).
SQUAD = dict(
    system_prompt="Read the following context and concisely answer my question.",
    field_system="system",
    field_instruction="question",
    field_input="context",
    field_output="output",
)
PHI_FOLDED = dict(SQUAD, format="<|user|> {input} {instruction} </s> <|assistant|>", no_input_format="<|user|> {instruction} </s> <|assistant|>")
NEWLINES = dict(SQUAD, format="<|user|>\n {input} {instruction} </s>\n<|assistant|>", no_input_format="<|user|> {instruction} </s>\n<|assistant|>")


@pytest.mark.parametrize(
    "spec, row, prompt",
    [
        (PHI_FOLDED, {"question": "Who?", "context": "Ann met Bob.", "output": "Ann"},
         "Read the following context and concisely answer my question.<|user|> Ann met Bob. Who? </s> <|assistant|>"),
        (NEWLINES, {"question": "Who?", "context": "Ann met Bob.", "output": "Ann"},
         "Read the following context and concisely answer my question.<|user|>\n Ann met Bob. Who? </s>\n<|assistant|>"),
        (NEWLINES, {"question": "Who?", "context": "", "output": "Ann"},
         "Read the following context and concisely answer my question.<|user|> Who? </s>\n<|assistant|>"),
        (NEWLINES, {"question": "Who?", "output": "Ann", "system": "Be brief."},
         "Be brief.<|user|> Who? </s>\n<|assistant|>"),
        (dict(system_prompt="Tell a story.", field_instruction="synopsis", field_output="short_story"),
         {"synopsis": "A cat flies.", "short_story": "Once..."}, "Tell a story.A cat flies.\n"),
        (dict(field_instruction="q", field_output="a", format="Q: {instruction} [{input}]\nA: "),
         {"q": "Why?", "input": "ctx", "a": "Because."}, "Q: Why? [ctx]\nA: "),
        (dict(field_instruction="q", field_output="a", format="Q: {instruction} [{input}]\nA: "),
         {"q": "Why?", "a": "Because."}, "Q: Why? []\nA: "),
        (dict(field_instruction="q", field_output="a", system_prompt="S", system_format="<sys>{system}</sys>\n",
              format="{instruction}\n"), {"q": "Why?", "a": "!"}, "<sys>S</sys>\nWhy?\n"),
    ],
    ids=["phi-folded", "newlines", "no-input", "row-system-wins", "no-format", "custom", "custom-missing-input", "system-format"],
)
def test_user_defined_rendering(tiny_tokenizer, spec, row, prompt):
    (segments,) = render([row], tiny_tokenizer, spec)
    assert segments == [Segment(prompt, False), Segment(row[spec.get("field_output", "output")], True)]


def test_special_token_text_in_a_format_becomes_the_token(tiny_tokenizer):
    tok = tiny_tokenizer
    out = tokenize([{"question": "Who?", "context": "x", "output": "Ann"}], tok, NEWLINES)
    ids = out.input_ids[0]
    assert ids.count(tok.eos_token_id) == 2  # the `</s>` in the format, and the EOS after the output
    assert trained_text(ids, out.labels[0], tok) == "Ann</s>"


def test_user_defined_field_naming_no_column_is_an_error(tiny_tokenizer):
    with pytest.raises(DataError, match=r"row 0 \(columns: instruction, output\): missing column `question` \(named by `field_instruction`\)"):
        tokenize([{"instruction": "x", "output": "y"}], tiny_tokenizer, NEWLINES)


def test_non_text_field_is_an_error(tiny_tokenizer):
    with pytest.raises(DataError, match=r"row 1 .*column `output` holds int, not text"):
        tokenize([ROW, {"instruction": "a", "output": 7}], tiny_tokenizer)


def test_unknown_placeholder_names_key_and_placeholder():
    with pytest.raises(ValueError, match=r"`no_input_format` uses unknown placeholder \{question\}"):
        UserDefinedFormat(no_input_format="{question}")


def test_completion_trains_everything_and_splits_long_texts(tiny_tokenizer):
    tok = tiny_tokenizer
    text = " ".join(["the cat sat on the mat"] * 40)
    out = tokenize([{"body": text}], tok, "completion", {"field": "body"}, sequence_len=64)
    assert out.counts.chunked == 1 and len(out.input_ids) > 2
    assert all(len(x) <= 64 for x in out.input_ids)
    joined = sum(out.input_ids, [])
    assert joined == tok(text)["input_ids"] + [tok.eos_token_id]  # nothing dropped, order kept
    assert sum(out.labels, [])[1:] == joined[1:]


def test_input_output_segments(tiny_tokenizer):
    tok = tiny_tokenizer
    row = {"segments": [{"text": "Q: hi\n", "label": False}, {"text": "A: hello", "label": True}, {"text": "\n", "label": False}]}
    out = tokenize([row], tok, "input_output")
    assert trained_text(out.input_ids[0], out.labels[0], tok) == "A: hello"
    assert out.input_ids[0][-1] != tok.eos_token_id  # no EOS is added to input_output rows


def test_pretokenized_rows_pass_through(tiny_tokenizer):
    out = tokenize([{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}], tiny_tokenizer, None)
    assert out.input_ids == [[5, 6, 7, 8]] and out.labels == [[-100, -100, 7, 8]]
    with pytest.raises(DataError, match="no `type:` is set"):
        tokenize([{"text": "x"}], tiny_tokenizer, None)


def test_excess_length_drop_truncate_and_prompt_too_long(tiny_tokenizer):
    long_row = {"instruction": "word " * 50, "output": "ok"}
    out = tokenize([ROW, long_row], tiny_tokenizer, sequence_len=64)
    assert out.counts.dropped_long == 1 and len(out.input_ids) == 1
    long_output = {"instruction": "Say it.", "output": "word " * 60}
    out = tokenize([long_output], tiny_tokenizer, sequence_len=64, excess_length_strategy="truncate")
    assert out.counts.truncated == 1 and len(out.input_ids[0]) == 64
    with pytest.raises(DataError, match="the prompt alone is longer than sequence_len"):
        tokenize([long_row], tiny_tokenizer, sequence_len=64, excess_length_strategy="truncate")


def test_fast_tokenizer_path_matches_autotokenizer(tiny_model_dir):
    """load_tokenizer skips AutoTokenizer for generic fast tokenizers; the result must be the same."""
    from transformers import AutoTokenizer

    from ft.config.model import ModelConfig
    from ft.tokenizer.load import _generic_fast_class, load_tokenizer

    m = ModelConfig(base_model=str(tiny_model_dir("llama")))
    assert _generic_fast_class(m)
    ours, auto = load_tokenizer(m), AutoTokenizer.from_pretrained(m.base_model)
    text = "### Instruction:\nHi</s><|im_start|> ünï 123"
    assert ours(text)["input_ids"] == auto(text)["input_ids"]
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.chat_template) == (
        auto.bos_token, auto.eos_token, auto.pad_token, auto.chat_template)


def test_ebft_transforms_give_a_prompt_and_the_answer_it_is_scored_against(tiny_tokenizer):
    """Axolotl's EBFT transforms: the chat template's user turn and generation prompt, then the answer as written;
    a plain prompt and answer; a text trained whole."""
    tok = tiny_tokenizer
    row = {"input": "Add 1 and 2.", "output": "def add():\n    return 3", "id": 7}
    (prompt, answer), = render([row], tok, "ebft_opencode.transform", chat_template="chatml")
    assert prompt == Segment("<|im_start|>user\nAdd 1 and 2.<|im_end|>\n<|im_start|>assistant\n", False)
    assert answer == Segment("def add():\n    return 3", True)
    out = tokenize([row], tok, "ebft_opencode", {"chat_template": "chatml"})
    assert trained_text(out.input_ids[0], out.labels[0], tok) == "def add():\n    return 3"
    assert render([{"question": "Q?", "answer": "A."}], tok, "ebft_strided_structured.transform") == [
        [Segment("Q?", False), Segment("A.", True)]]
    out = tokenize([{"prompt": "Q?", "completion": "A."}], tok, "ebft_strided_structured.transform")
    assert out.input_ids[0][0] == tok.bos_token_id and out.input_ids[0][-1] == tok.eos_token_id
    assert render([{"question": "all of it"}], tok, "ebft_pretrain.transform") == [[Segment("all of it", True)]]
