"""Token estimates (accounting/tokens.py): cl100k counts, OpenAI's message framing, and the
encoding held once per worker."""

from __future__ import annotations

from accounting import tokens


def test_text_tokens_are_cl100k_counts():
    assert tokens.text_tokens("") == 0
    assert tokens.text_tokens("hello world") == 2
    assert tokens.text_tokens("hello world, how are you") == 6
    # special-token text is counted as text, not refused
    assert tokens.text_tokens("<|endoftext|>") > 1


def test_prompt_tokens_add_openais_framing():
    messages = [{"role": "system", "content": "hello world"},
                {"role": "user", "content": [{"type": "text", "text": "hello world"}], "name": "ann"}]
    framing = tokens.TOKENS_PER_REPLY + 2 * tokens.TOKENS_PER_MESSAGE
    assert tokens.prompt_tokens(messages) == framing + 2 + 2 + tokens.text_tokens("ann")


def test_the_encoding_keeps_no_python_copy_of_its_ranks():
    # The Rust core encodes; tiktoken's Python dict of the same ranks is ~10 MB per worker.
    encoding = tokens._encoding()
    assert "_mergeable_ranks" not in encoding.__dict__
    assert encoding.encode("hello world") == [15339, 1917]
