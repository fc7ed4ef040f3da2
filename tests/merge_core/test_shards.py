"""The one shard writer (model folders and synthetic checkpoints): names, index, size bound, modes, contents."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from merge_core.shards import ShardWriter
from merge_core.synthetic import make_checkpoint


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"t{i}": torch.randn(10, 10, generator=gen) for i in range(5)}  # 400 bytes each


def _write(folder, shard_size, **kw):
    w = ShardWriter(folder, shard_size, **kw)
    for name, t in _tensors().items():
        w.add(name, t)
    return w.close()


def test_one_shard_is_model_safetensors(tmp_path) -> None:
    files = _write(tmp_path, None)
    assert files == [tmp_path / "model.safetensors"] and sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    loaded = load_file(str(files[0]))
    assert all(torch.equal(loaded[n], t) for n, t in _tensors().items())


def test_shards_are_bounded_named_and_indexed(tmp_path) -> None:
    files = _write(tmp_path, 900)  # two tensors per shard
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 400
    assert index["weight_map"] == {"t0": files[0].name, "t1": files[0].name, "t2": files[1].name,
                                   "t3": files[1].name, "t4": files[2].name}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    for f in files:
        loaded = load_file(str(f))
        assert all(torch.equal(loaded[n], _tensors()[n]) for n in loaded)


def test_index_for_one_shard_and_a_tensor_bigger_than_a_shard(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    files = _write(tmp_path / "a", None, index=True)
    assert [f.name for f in files] == ["model-00001-of-00001.safetensors"]
    assert (tmp_path / "a" / "model.safetensors.index.json").is_file()
    (tmp_path / "b").mkdir()
    assert len(_write(tmp_path / "b", 10)) == 5  # a shard holds at least one tensor


def test_shards_get_the_umask_mode(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        files = _write(tmp_path, 900)
    finally:
        os.umask(old)
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o644"}


def test_synthetic_checkpoints_keep_their_layout(tmp_path) -> None:
    single = make_checkpoint(tmp_path / "s", tokenizer=False)
    assert sorted(os.listdir(single)) == ["config.json", "generation_config.json", "model.safetensors"]
    sharded = make_checkpoint(tmp_path / "m", tokenizer=False, shard_size=1 << 30)  # one shard, still indexed
    assert sorted(os.listdir(sharded)) == ["config.json", "generation_config.json", "model-00001-of-00001.safetensors",
                                           "model.safetensors.index.json"]
    assert load_file(str(single / "model.safetensors")).keys() == load_file(
        str(sharded / "model-00001-of-00001.safetensors")).keys()
