import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from trainer.errors import DataError
from trainer.shards import HEADER_BYTES, MAGIC, read_shard, read_shards, write_shard


def test_round_trip(tmp_path):
    tokens = [50256, 0, 1, 65535, 15496, 995]
    write_shard(tmp_path / "a.bin", tokens)
    out = read_shard(tmp_path / "a.bin")
    assert out.dtype == np.uint16 and out.tolist() == tokens
    header = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=256)
    assert header[:3].tolist() == [MAGIC, 1, len(tokens)] and not header[3:].any()
    assert (tmp_path / "a.bin").stat().st_size == HEADER_BYTES + 2 * len(tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left behind


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", [])
    assert read_shard(tmp_path / "e.bin").size == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 65535), max_size=3000), st.sampled_from([np.uint16, np.int32, np.int64]))
def test_round_trip_property(tmp_path_factory, values, dtype):
    path = tmp_path_factory.mktemp("prop") / "s.bin"
    arr = np.array(values, dtype=dtype)
    write_shard(path, arr)
    np.testing.assert_array_equal(read_shard(path), arr.astype(np.uint16))


@pytest.mark.parametrize("bad", [[-1], [65536], [1.0, 2.0], [[1, 2]], ["a"]])
def test_write_rejects_bad_tokens(tmp_path, bad):
    with pytest.raises(DataError, match="write_shard"):
        write_shard(tmp_path / "x.bin", bad)
    assert not (tmp_path / "x.bin").exists()


def _corrupt(path, *, magic=None, version=None, count=None, extra=b"", cut=0):
    data = bytearray(path.read_bytes())
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4").copy()
    for i, v in enumerate((magic, version, count)):
        if v is not None:
            header[i] = v
    data[:HEADER_BYTES] = header.tobytes()
    path.write_bytes(bytes(data[:len(data) - cut]) + extra)


@pytest.mark.parametrize("kind, change, message", [
    ("truncated", dict(cut=2), "truncated"),
    ("oversized", dict(extra=b"\0\0"), "trailing"),
    ("magic", dict(magic=1234), "magic"),
    ("version", dict(version=7), "version"),
    ("count", dict(count=-5), "header says"),
])
def test_corrupt_shards_raise(tmp_path, kind, change, message):
    path = tmp_path / f"{kind}.bin"
    write_shard(path, np.arange(100))
    _corrupt(path, **change)
    with pytest.raises(DataError, match=message) as err:
        read_shard(path)
    assert str(path) in str(err.value)


def test_short_and_missing_files(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="short.bin.*header"):
        read_shard(tmp_path / "short.bin")
    with pytest.raises(DataError, match="nope.bin.*no such file"):
        read_shard(tmp_path / "nope.bin")


def test_token_id_beyond_vocab(tmp_path):
    path = tmp_path / "v.bin"
    write_shard(path, [0, 5, 299, 300, 7])
    assert read_shard(path, vocab_size=301).tolist() == [0, 5, 299, 300, 7]
    with pytest.raises(DataError) as err:
        read_shard(path, vocab_size=300)
    assert str(path) in str(err.value) and "token id 300 at position 3" in str(err.value)


def test_read_shards_sorted_concat(tmp_path):
    write_shard(tmp_path / "t_000001.bin", [3, 4])
    write_shard(tmp_path / "t_000000.bin", [1, 2])
    assert read_shards(str(tmp_path / "t_*.bin")).tolist() == [1, 2, 3, 4]
    assert read_shards([tmp_path / "t_000001.bin", tmp_path / "t_000000.bin"]).tolist() == [1, 2, 3, 4]
    assert read_shards(tmp_path / "t_000001.bin").tolist() == [3, 4]
    with pytest.raises(DataError, match="no shard files match"):
        read_shards(str(tmp_path / "missing_*.bin"))
    with pytest.raises(DataError):
        read_shards([])
