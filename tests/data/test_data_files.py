"""Token files and byte-level text: round trips, windows, held-out splits and errors naming the path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from archspec.data import ByteTokenizer, MemmapTokens, make_dataset, write_token_file
from archspec.data.config import TextConfig, TokensConfig
from archspec.data.tokens import held_out_cut


def fresh_seed() -> int:
    return int(torch.randint(0, 2**31, ()).item())


@pytest.mark.parametrize(("dtype", "top"), [("uint16", 2**16 - 1), ("uint32", 2**32 - 1)])
def test_token_file_round_trip(tmp_path: Path, dtype: str, top: int) -> None:
    ids = torch.randint(0, top, (3000,), dtype=torch.int64).tolist() + [0, top]
    path = tmp_path / f"ids.{dtype}.bin"
    assert write_token_file(path, iter(ids), dtype) == len(ids)
    assert path.stat().st_size == len(ids) * np.dtype(dtype).itemsize
    tokens = MemmapTokens(path, dtype)
    assert len(tokens) == len(ids)
    assert tokens[:].tolist() == ids
    assert tokens[100:110].tolist() == ids[100:110]


@pytest.mark.parametrize(("dtype", "bad"), [("uint16", 2**16), ("uint16", -1), ("uint32", 2**32)])
def test_writing_an_id_that_does_not_fit_is_rejected(tmp_path: Path, dtype: str, bad: int) -> None:
    with pytest.raises(ValueError, match=rf"ids: id {bad} at index 2 does not fit {dtype}"):
        write_token_file(tmp_path / "x.bin", [1, 2, bad], dtype)


def test_missing_token_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.bin"
    with pytest.raises(FileNotFoundError, match="nowhere.bin"):
        make_dataset(TokensConfig(path=str(missing), vocab_size=10, seq_len=4), "train", 0)


def test_file_size_not_matching_the_dtype_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "odd.bin"
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="dtype"):
        MemmapTokens(path, "uint32")


def unique_token_file(tmp_path: Path, n: int, name: str = "ids.bin") -> tuple[str, list[int]]:
    """A uint32 file of n distinct ids (a permutation), so every window's start can be read off its first id."""
    ids = torch.randperm(n).tolist()
    path = tmp_path / name
    write_token_file(path, ids, "uint32")
    return str(path), ids


def test_train_windows_are_seeded_random_slices_of_the_training_part(tmp_path: Path) -> None:
    path, ids = unique_token_file(tmp_path, 4000)
    config = TokensConfig(path=path, dtype="uint32", vocab_size=4000, seq_len=32, val_fraction=0.1, num_train=50)
    seed = fresh_seed()
    dataset = make_dataset(config, "train", seed)
    cut = held_out_cut(4000, 0.1)
    assert len(dataset) == 50
    starts = []
    for i in range(len(dataset)):
        item = dataset[i]
        start = ids.index(int(item["input_ids"][0]))
        assert item["input_ids"].tolist() == ids[start : start + 32]
        assert item["targets"].tolist() == ids[start + 1 : start + 33]
        assert start + 33 <= cut
        starts.append(start)
    assert len(set(starts)) > 40
    again = make_dataset(config, "train", seed)
    assert all(torch.equal(again[i]["input_ids"], dataset[i]["input_ids"]) for i in range(50))
    other = make_dataset(config, "train", seed + 1)
    assert not all(torch.equal(other[i]["input_ids"], dataset[i]["input_ids"]) for i in range(50))


def test_val_windows_tile_the_held_out_tail_contiguously(tmp_path: Path) -> None:
    path, ids = unique_token_file(tmp_path, 1000)
    config = TokensConfig(path=path, dtype="uint32", vocab_size=1000, seq_len=16, val_fraction=0.2)
    dataset = make_dataset(config, "val", 0)
    cut = held_out_cut(1000, 0.2)
    assert len(dataset) == (1000 - cut - 1) // 16
    for i in range(len(dataset)):
        start = cut + 16 * i
        assert dataset[i]["input_ids"].tolist() == ids[start : start + 16]
        assert dataset[i]["targets"].tolist() == ids[start + 1 : start + 17]
    capped = make_dataset(config.model_copy(update={"num_val": 3}), "val", 0)
    assert len(capped) == 3


def test_separate_val_file_is_used_whole(tmp_path: Path) -> None:
    train_path, _ = unique_token_file(tmp_path, 300, "train.bin")
    val_path, val_ids = unique_token_file(tmp_path, 100, "val.bin")
    config = TokensConfig(path=train_path, val_path=val_path, dtype="uint32", vocab_size=300, seq_len=9)
    val = make_dataset(config, "val", 0)
    assert len(val) == 99 // 9
    assert val[0]["input_ids"].tolist() == val_ids[:9]
    assert len(make_dataset(config, "train", 0)) == 300 // 9
    with pytest.raises(FileNotFoundError, match="missing_val.bin"):
        make_dataset(config.model_copy(update={"val_path": str(tmp_path / "missing_val.bin")}), "val", 0)


def test_ids_at_or_above_vocab_size_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "ids.bin"
    write_token_file(path, [1, 2, 3, 70, 4, 5, 6, 7, 8], "uint16")
    dataset = make_dataset(TokensConfig(path=str(path), val_path=str(path), vocab_size=64, seq_len=8), "val", 0)
    with pytest.raises(ValueError, match="vocab_size: .*ids.bin holds id 70 at token 3"):
        dataset[0]


def test_too_short_split_is_rejected_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "ids.bin"
    write_token_file(path, range(100), "uint16")
    with pytest.raises(ValueError, match="val_fraction"):
        make_dataset(TokensConfig(path=str(path), vocab_size=100, seq_len=16, val_fraction=0.1), "val", 0)


def test_token_windows_survive_pickling_for_worker_processes(tmp_path: Path) -> None:
    path, _ = unique_token_file(tmp_path, 200)
    dataset = make_dataset(TokensConfig(path=path, dtype="uint32", vocab_size=200, seq_len=8), "train", 1)
    first = dataset[0]["input_ids"]
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[0]["input_ids"], first)


TEXT = "Grüße aus Köln — 東京 🙂 naïve café\nzweite Zeile.\n"


def test_byte_tokenizer_round_trips_non_ascii_text() -> None:
    tokenizer = ByteTokenizer(add_bos=True, add_eos=True)
    ids = tokenizer.encode(TEXT)
    assert ids[0] == 256 and ids[-1] == 257
    assert ids[1:-1] == list(TEXT.encode("utf-8"))
    assert tokenizer.decode(ids) == TEXT
    assert ByteTokenizer().encode("é") == [0xC3, 0xA9]
    assert tokenizer.vocab_size == 258


def test_byte_tokenizer_rejects_ids_outside_its_vocab() -> None:
    with pytest.raises(ValueError, match="ids"):
        ByteTokenizer().decode([65, 300])


def test_text_windows_are_the_bytes_of_the_files_with_bos_and_eos(tmp_path: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(TEXT * 3, encoding="utf-8")
    second.write_text("ß" * 40, encoding="utf-8")
    tokenizer = ByteTokenizer(add_bos=True, add_eos=True)
    stream = tokenizer.encode(TEXT * 3) + tokenizer.encode("ß" * 40)
    config = TextConfig(path=[str(first), str(second)], seq_len=12, val_fraction=0.25)
    cut = held_out_cut(len(stream), 0.25)
    val = make_dataset(config, "val", 0)
    assert len(val) == (len(stream) - cut - 1) // 12
    for i in range(len(val)):
        start = cut + 12 * i
        assert val[i]["input_ids"].tolist() == stream[start : start + 12]
        assert val[i]["targets"].tolist() == stream[start + 1 : start + 13]
    train_part = stream[:cut]
    train = make_dataset(config, "train", fresh_seed())
    assert len(train) == cut // 12
    for i in range(len(train)):
        window = train[i]["input_ids"].tolist() + train[i]["targets"].tolist()[-1:]
        assert any(train_part[s : s + 13] == window for s in range(cut - 12))


def test_text_without_specials_is_plain_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(TEXT, encoding="utf-8")
    config = TextConfig(
        path=str(path), val_path=str(path), seq_len=len(TEXT.encode()) - 1, add_bos=False, add_eos=False
    )
    item = make_dataset(config, "val", 0)[0]
    assert ByteTokenizer().decode(item["input_ids"].tolist() + item["targets"].tolist()[-1:]) == TEXT


def test_missing_or_non_utf8_text_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        make_dataset(TextConfig(path=str(tmp_path / "absent.txt"), seq_len=4), "train", 0)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("café".encode("latin-1") * 10)
    with pytest.raises(ValueError, match="latin1.txt.*not UTF-8"):
        make_dataset(TextConfig(path=str(binary), seq_len=4), "train", 0)
