"""Tokenized caches on the real OpenWebText sample (../shared/data)."""

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from data.batches import TrainBatches, eval_batches, tokens
from data.prepare import EOT, load_splits, prepare, tokenizer

ROOT = Path(__file__).resolve().parents[1]


def owt_cfg(shared_data, tmp_path, **kw):
    base = OmegaConf.load(ROOT / "conf/data/local.yaml")
    cfg = OmegaConf.merge(base, OmegaConf.load(ROOT / "conf/data/owt-sample.yaml"), kw)
    cfg.pop("defaults", None)
    cfg.root, cfg.cache_dir = str(shared_data), str(tmp_path / "cache")
    return cfg


def test_sample_round_trips_through_the_cache(shared_data, tmp_path):
    cfg = owt_cfg(shared_data, tmp_path)
    paths = prepare(cfg)
    enc = tokenizer()
    docs = [json.loads(l)["text"] for l in lzma.open(shared_data / "openwebtext-sample/openwebtext_sample.jsonl.xz", "rt")]
    ids = np.concatenate([tokens(paths["train"]), tokens(paths["val"])])
    assert (ids == EOT).sum() == len(docs) == 500
    # every cached document decodes to one of the sample's texts
    texts = set(docs)
    for piece in enc.decode(tokens(paths["val"]).tolist()).split("<|endoftext|>")[:-1]:
        assert piece in texts
    meta = json.loads(Path(paths["train"]).with_suffix(".json").read_text())
    assert meta["tokens"] == len(tokens(paths["train"])) and meta["tokenizer"] == "tiktoken/gpt2"


def test_split_is_deterministic(shared_data, tmp_path):
    a = load_splits(owt_cfg(shared_data, tmp_path))
    b = load_splits(owt_cfg(shared_data, tmp_path))
    assert a["val"]["text"] == b["val"]["text"] and len(a["val"]) == 50


def test_cache_is_reused_and_a_truncated_cache_rebuilt(shared_data, tmp_path):
    cfg = owt_cfg(shared_data, tmp_path)
    paths = prepare(cfg)
    train = Path(paths["train"])
    mtime, size = train.stat().st_mtime_ns, train.stat().st_size
    assert prepare(cfg) == paths and train.stat().st_mtime_ns == mtime  # reused
    with open(train, "r+b") as f:
        f.truncate(size // 2)  # a crash mid-copy
    prepare(cfg)
    assert train.stat().st_size == size


def test_missing_data_is_one_clear_error(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf/data/local.yaml"),
                          {"root": str(tmp_path), "cache_dir": str(tmp_path), "train_files": "nope/*.jsonl"})
    with pytest.raises(FileNotFoundError, match="no data file matches .*nope"):
        prepare(cfg)


def test_openwebtext_hub_path_on_the_sample(shared_data, tmp_path, monkeypatch):
    """The real `data=openwebtext` path (hub load, nanoGPT split, tokenization), with the hub
    replaced by the 500 genuine documents, since this machine is offline."""
    import datasets
    sample = datasets.load_dataset("json", data_files=str(shared_data / "openwebtext-sample/openwebtext_sample.jsonl.xz"),
                                   cache_dir=str(tmp_path / "hf"))
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: calls.append(path) or sample)
    cfg = OmegaConf.load(ROOT / "conf/data/openwebtext.yaml")
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.val_fraction = 0.1  # the real 0.0005 of 500 documents would be no document
    paths = prepare(cfg)
    assert calls == ["Skylion007/openwebtext"]
    assert (tokens(paths["val"]) == EOT).sum() == 50


def test_openwebtext_offline_names_the_local_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = OmegaConf.load(ROOT / "conf/data/openwebtext.yaml")
    cfg.cache_dir = str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="data=owt-sample"):
        prepare(cfg)


def test_batches(shared_data, tmp_path):
    import torch
    data = tokens(prepare(owt_cfg(shared_data, tmp_path))["val"])
    x, y = next(TrainBatches(data, 4, 64, torch.Generator().manual_seed(0), "cpu", prefetch=False))
    assert x.shape == y.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])
    windows = list(eval_batches(data, 3, 64, "cpu", max_tokens=640))
    xs = torch.cat([x for x, _ in windows])
    assert xs.shape == (10, 64)
    assert torch.equal(xs.flatten(), torch.from_numpy(data[:640].astype(np.int64)))  # in order, no overlap
    # Two ranks: equal contiguous shares that together are the one rank's windows.
    shares = [torch.cat([x for x, _ in eval_batches(data, 3, 64, "cpu", 640, rank, 2)]) for rank in (0, 1)]
    assert shares[0].shape == shares[1].shape == (5, 64) and torch.equal(torch.cat(shares), xs)


def test_ranks_split_each_steps_windows(shared_data, tmp_path):
    """1 rank x 2 micro-batches sees what 2 ranks x 1 micro-batch see, step after step."""
    import torch
    data = tokens(prepare(owt_cfg(shared_data, tmp_path))["val"])
    one = TrainBatches(data, 3, 32, torch.Generator().manual_seed(7), "cpu", prefetch=False, accum=2)
    ranks = [TrainBatches(data, 3, 32, torch.Generator().manual_seed(7), "cpu", prefetch=True, rank=r, world=2)
             for r in (0, 1)]
    for _ in range(3):
        assert torch.equal(torch.cat([next(one)[0], next(one)[0]]), torch.cat([next(b)[0] for b in ranks]))
    for b in ranks:
        b.close()


def test_prefetched_batches_are_the_same_sequence_and_resume(shared_data, tmp_path):
    import torch
    from data.batches import TrainBatches
    data = tokens(prepare(owt_cfg(shared_data, tmp_path))["val"])
    plain = TrainBatches(data, 3, 32, torch.Generator().manual_seed(7), "cpu", prefetch=False)
    ahead = TrainBatches(data, 3, 32, torch.Generator().manual_seed(7), "cpu", prefetch=True)
    for _ in range(4):
        (x1, y1), (x2, y2) = next(plain), next(ahead)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # The worker has drawn batch 6 already; rng_state() still resumes at batch 5.
    resumed = TrainBatches(data, 3, 32, torch.Generator().set_state(ahead.rng_state()), "cpu", prefetch=True)
    for _ in range(2):
        assert torch.equal(next(resumed)[0], next(plain)[0])
    ahead.close()
    resumed.close()
