"""Row shards (runtime/data/shards.py) and the trainer's memory-mapped split (runtime/train/data.py).

Rows come back exactly as written, in any order and across shard boundaries; a shard that is
missing, truncated, altered or unreadable is refused when the split opens (so never trained on),
naming the shard and the job to rebuild; a split joined from two sources (the dataset's rows and
the generate job's) reads each row from its own source.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from runtime.data.shards import RowSource, ShardError, read_split, write_shards
from runtime.train.data import Split, TrainDataError, load_split, make_batch, with_extra_rows

L, K = 12, 3
TOKENS = ("input_ids", "attention_mask", "loss_mask", "tool_name_mask", "json_args_mask", "integration_mask")


def rows_and_targets(n: int, seed: int = 0, k: int = K) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, L + 1, size=n)
    rows = {name: np.zeros((n, L), dtype=np.int32) for name in TOKENS}
    rows["input_ids"] = rng.integers(5, 100, size=(n, L)).astype(np.int32)
    for r, m in enumerate(lengths):
        rows["attention_mask"][r, :m] = 1
        rows["loss_mask"][r, 1:m] = 1
        rows["input_ids"][r, m:] = 0
    targets = {"topk_ids": rng.integers(0, 100, size=(n, L, k)).astype(np.int32),
               "topk_logits": rng.normal(size=(n, L, k)).astype(np.float32)}
    return rows, targets


def write(folder, n: int, shard_rows: int, seed: int = 0):
    rows, targets = rows_and_targets(n, seed)
    write_shards(folder / "data", "train", rows, rows["attention_mask"].sum(axis=1), {"modelspec": "{}"}, shard_rows)
    write_shards(folder / "targets", "train", targets, None, {"modelspec": "{}"}, shard_rows)
    return rows, targets


def test_rows_read_back_exactly_in_any_order_across_shards(tmp_path):
    rows, _ = write(tmp_path, 10, shard_rows=3)
    index = json.loads((tmp_path / "data" / "train.index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [3, 3, 3, 1]
    src = RowSource(tmp_path / "data", "train", verify=True)
    assert src.rows == 10 and src.shape("input_ids") == [L]
    assert list(src.lengths()) == list(rows["attention_mask"].sum(axis=1))
    order = [9, 0, 4, 3, 8, 2]
    got = src.take("input_ids", order, columns=7)
    assert got.shape == (6, 7) and (got.numpy() == rows["input_ids"][order, :7]).all()
    assert (read_split(tmp_path / "data", "train", numpy=True)["loss_mask"] == rows["loss_mask"]).all()


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "altered"])
def test_a_damaged_shard_is_refused_before_any_row_is_read(tmp_path, damage):
    write(tmp_path, 10, shard_rows=4)
    shard = tmp_path / "data" / "train-00001.safetensors"
    if damage == "missing":
        shard.unlink()
        expect = "shard missing"
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-16])
        expect = "shard truncated or altered"
    elif damage == "garbage":
        shard.write_bytes(b"\0" * shard.stat().st_size)  # same size: the hash differs and the header no longer parses
        expect = "content differs from its index"
    else:
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF  # same size, a valid header: only the content hash tells
        shard.write_bytes(bytes(data))
        expect = "content differs from its index"
    with pytest.raises(ShardError, match=expect) as info:
        RowSource(tmp_path / "data", "train", rebuild="the dataset job", verify=True)
    assert "train-00001.safetensors" in str(info.value) and "rebuild the dataset job" in str(info.value)
    if damage != "altered":  # the trainer opens without hashing: sizes and headers are checked
        opened = {"missing": "shard missing", "truncated": "shard truncated", "garbage": "unreadable shard"}[damage]
        with pytest.raises(TrainDataError, match=f"train-00001.safetensors: {opened}"):
            load_split(tmp_path / "data", tmp_path / "targets", "train")


def test_batches_match_the_rows_in_memory(tmp_path):
    rows, targets = write(tmp_path, 9, shard_rows=2)
    mapped = load_split(tmp_path / "data", tmp_path / "targets", "train")
    whole = Split({**{n: torch.from_numpy(rows[n]).long() for n in TOKENS},
                   "topk_ids": torch.from_numpy(targets["topk_ids"]).long(), "topk_logits": torch.from_numpy(targets["topk_logits"])})
    assert mapped.rows == whole.rows == 9 and (mapped.lengths == whole.lengths).all()
    for pick in ([0, 1, 2], [8, 3, 5, 1], [4]):
        a, b = make_batch(mapped, pick, 10, torch.device("cpu")), make_batch(whole, pick, 10, torch.device("cpu"))
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_a_joined_split_reads_each_row_from_its_source(tmp_path):
    base, base_t = write(tmp_path / "a", 5, shard_rows=2, seed=1)
    extra, extra_t = write(tmp_path / "b", 4, shard_rows=3, seed=2)
    split = with_extra_rows(load_split(tmp_path / "a" / "data", tmp_path / "a" / "targets", "train"),
                            tmp_path / "b" / "data", tmp_path / "b" / "targets")
    assert split.rows == 9
    batch = make_batch(split, [7, 0, 5, 4], L, torch.device("cpu"))
    want = np.concatenate([base["input_ids"], extra["input_ids"]])[[7, 0, 5, 4]]
    cut = batch["input_ids"].shape[1]
    assert (batch["input_ids"].numpy() == want[:, :cut]).all()
    want_t = np.concatenate([base_t["topk_logits"], extra_t["topk_logits"]])[[7, 0, 5, 4]]
    assert np.allclose(batch["topk_logits"].numpy(), want_t[:, :cut])


def test_targets_of_another_top_k_cannot_join(tmp_path):
    write(tmp_path / "a", 4, shard_rows=4)
    rows, _ = rows_and_targets(3)
    _, targets = rows_and_targets(3, k=K + 1)
    write_shards(tmp_path / "b" / "data", "train", rows, rows["attention_mask"].sum(axis=1), {}, 4)
    write_shards(tmp_path / "b" / "targets", "train", targets, None, {}, 4)
    base = load_split(tmp_path / "a" / "data", tmp_path / "a" / "targets", "train")
    with pytest.raises(TrainDataError, match=f"top-{K + 1} targets cannot join top-{K}"):
        with_extra_rows(base, tmp_path / "b" / "data", tmp_path / "b" / "targets")


def test_a_legacy_single_file_reads_as_one_shard(tmp_path):
    from safetensors.numpy import save_file

    rows, _ = rows_and_targets(4)
    (tmp_path / "old").mkdir()
    save_file(rows, str(tmp_path / "old" / "train.safetensors"))
    src = RowSource(tmp_path / "old", "train")
    assert src.rows == 4 and list(src.lengths()) == list(rows["attention_mask"].sum(axis=1))
    shutil.rmtree(tmp_path / "old")
    with pytest.raises(ShardError, match="no 'train' rows"):
        RowSource(tmp_path / "old", "train")


@pytest.mark.parametrize("world", [1, 2, 4])
def test_bucketing_regroups_a_steps_rows_by_length(tmp_path, world):
    from runtime.train.data import step_micro_batches

    write(tmp_path, 40, shard_rows=16)
    split = load_split(tmp_path / "data", tmp_path / "targets", "train")
    plain = step_micro_batches(split, 7, 3, 2, 8, world, bucket=False)
    bucketed = step_micro_batches(split, 7, 3, 2, 8, world, bucket=True)
    assert sorted(r for g in plain for r in g) == sorted(r for g in bucketed for r in g)  # the step trains the same rows
    padded = lambda groups: sum(len(g) * int(split.lengths[g].max()) for g in groups)  # noqa: E731
    assert padded(bucketed) <= padded(plain)
    # the same micro-batches whatever the world size: only which rank runs which changes
    one = step_micro_batches(split, 7, 3, 2, 8, 1, bucket=True)
    assert sorted(map(sorted, bucketed)) == sorted(map(sorted, one))
    if world == 2:  # a snake deal balances the ranks: rank 0 runs chunks 0, 3, 4, 7 of the sorted rows, rank 1 1, 2, 5, 6
        flat = sorted((r for g in plain for r in g), key=lambda r: (int(split.lengths[r]), r))
        chunks = [flat[i * 2:(i + 1) * 2] for i in range(8)]
        assert bucketed == [chunks[i] for i in (0, 3, 4, 7, 1, 2, 5, 6)]
