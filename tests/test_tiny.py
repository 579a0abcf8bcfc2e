"""The tiny-model builder: every architecture, deterministic, loadable, with a working tokenizer."""

from __future__ import annotations

import pytest

from ft.tiny import ARCHITECTURES, build_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_builds_small_and_deterministic(arch, tiny_tokenizer):
    import torch

    a = build_model(arch, tiny_tokenizer, seed=1)
    b = build_model(arch, tiny_tokenizer, seed=1)
    c = build_model(arch, tiny_tokenizer, seed=2)
    n = sum(p.numel() for p in a.parameters())
    assert 100_000 <= n <= 1_000_000, n
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    ids = torch.tensor([tiny_tokenizer("hello world")["input_ids"]])
    out = a(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)


def test_saved_model_loads_with_auto_classes(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir("qwen2")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen2"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    ids = tok("a b c", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id  # BOS is added, like Llama's tokenizer
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_tokenizer_has_chatml_template_and_special_tokens(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    ids = tiny_tokenizer("x</s><|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[-2:] == [tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # any text encodes and decodes back (byte-level BPE)
    sample = "Ünïcode, digits 123 and\ttabs"
    assert tiny_tokenizer.decode(tiny_tokenizer(sample, add_special_tokens=False)["input_ids"]) == sample
