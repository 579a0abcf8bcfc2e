"""chat_template: tokens equal apply_chat_template token for token; masks cover exactly the trained turns."""

from __future__ import annotations

import pytest

from ft.tokenizer.chat_templates import CHAT_TEMPLATES
from ft.data.labels import IGNORE
from helpers import tokenize, trained_text

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "Now count to three."},
    {"role": "assistant", "content": "one two three"},
]
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "phi3": "<|end|>", "gemma": "<end_of_turn>"}


def reference_ids(tok, messages, template=None):
    kwargs = {"chat_template": template} if template else {}
    out = tok.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", ["tokenizer_default", "chatml", "llama3", "phi3", "gemma"])
def test_tokens_match_apply_chat_template(tiny_tokenizer, name):
    tok = tiny_tokenizer
    ds_kw = {"chat_template": name} if name != "tokenizer_default" else {}
    out = tokenize([{"messages": CONVERSATION}], tok, "chat_template", ds_kw, sequence_len=512)
    assert out.input_ids[0] == reference_ids(tok, CONVERSATION, CHAT_TEMPLATES.get(name))
    eot = END_OF_TURN.get(name, "<|im_end|>")
    assert trained_text(out.input_ids[0], out.labels[0], tok) == f"hi{eot}one two three{eot}"


def test_roles_to_train_and_train_on_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [{"messages": CONVERSATION}]
    both = tokenize(rows, tok, "chat_template", {"roles_to_train": ["user", "assistant"]}, sequence_len=512)
    assert trained_text(both.input_ids[0], both.labels[0], tok) == (
        "Say hi.<|im_end|>hi<|im_end|>Now count to three.<|im_end|>one two three<|im_end|>"
    )
    none = tokenize(rows, tok, "chat_template", {"train_on_eos": "none"}, sequence_len=512)
    assert trained_text(none.input_ids[0], none.labels[0], tok) == "hione two three"
    last = tokenize(rows, tok, "chat_template", {"train_on_eos": "last"}, sequence_len=512)
    assert trained_text(last.input_ids[0], last.labels[0], tok) == "hione two three<|im_end|>"
    every = tokenize(rows, tok, "chat_template", {"train_on_eos": "all"}, sequence_len=512)
    assert trained_text(every.input_ids[0], every.labels[0], tok).count("<|im_end|>") == 5


def test_sharegpt_rows_are_mapped(tiny_tokenizer):
    tok = tiny_tokenizer
    sharegpt = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]
    out = tokenize([{"conversations": sharegpt}], tok, "sharegpt", sequence_len=512)
    assert out.input_ids[0] == reference_ids(tok, [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}])
    assert trained_text(out.input_ids[0], out.labels[0], tok) == "hi<|im_end|>"


def test_mask_is_exactly_the_assistant_tokens(tiny_tokenizer):
    """Every trained position holds an assistant token or an end-of-turn token, and nothing else."""
    tok = tiny_tokenizer
    out = tokenize([{"messages": CONVERSATION}], tok, "chat_template", sequence_len=512)
    ids, labels = out.input_ids[0], out.labels[0]
    trained_positions = [i for i, l in enumerate(labels) if l != IGNORE]
    assert labels[trained_positions[0] - 1] == IGNORE
    hi = tok("hi", add_special_tokens=False)["input_ids"]
    start = trained_positions[0]
    assert ids[start : start + len(hi)] == hi
    assert ids[start - 1] == tok("\n", add_special_tokens=False)["input_ids"][-1]  # header ends untrained


def test_missing_messages_column_is_an_error(tiny_tokenizer):
    from ft.errors import DataError

    with pytest.raises(DataError, match=r"row 0 \(columns: text\): missing column `messages`"):
        tokenize([{"text": "x"}], tiny_tokenizer, "chat_template")


THINKING = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.thinking %}<think>{{ m.thinking }}</think>"
            "{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}")


def test_reasoning_text_goes_to_the_template_and_is_trained(tiny_tokenizer):
    """field_thinking → template_thinking_key (gpt-oss's example): the template writes it, and it is trained with its
    turn; the same rows with Axolotl's default key (reasoning_content) pass it under that key."""
    tok = tiny_tokenizer
    turns = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi", "why": "a greeting"}]
    keys = {"chat_template_jinja": THINKING, "field_thinking": "why", "template_thinking_key": "thinking"}
    out = tokenize([{"messages": turns}], tok, "chat_template", keys, sequence_len=512)
    expected = [turns[0], {"role": "assistant", "content": "hi", "thinking": "a greeting"}]
    assert out.input_ids[0] == reference_ids(tok, expected, THINKING)
    trained = trained_text(out.input_ids[0], out.labels[0], tok)
    assert trained.endswith("a greeting</think>hi<|im_end|>") and len(trained) <= len("<think>a greeting</think>hi<|im_end|>")
    plain = tokenize([{"messages": turns}], tok, "chat_template", {"chat_template_jinja": THINKING}, sequence_len=512)
    assert trained_text(plain.input_ids[0], plain.labels[0], tok) == "hi<|im_end|>"  # no `why` read without the key
    default = [turns[0], {"role": "assistant", "content": "hi", "reasoning_content": "a greeting"}]
    read = THINKING.replace("m.thinking", "m.reasoning_content")
    out = tokenize([{"messages": default}], tok, "chat_template", {"chat_template_jinja": read}, sequence_len=512)
    assert trained_text(out.input_ids[0], out.labels[0], tok) == trained
