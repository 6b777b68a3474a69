"""Tokenized caches on the real OpenWebText sample (../shared/data)."""

import json
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from data.batches import TrainBatches, eval_batches, tokens
from data.prepare import EOT, DataError, prepare, tokenizer, verified

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


def test_hold_out_is_datasets_train_test_split(shared_data, tmp_path):
    """The standard-library reader and hold-out give the tokens datasets' json builder and
    train_test_split(test_size, seed) gave (the split nanoGPT-style runs were trained on)."""
    import datasets
    paths = prepare(owt_cfg(shared_data, tmp_path))
    ds = datasets.load_dataset("json", data_files=str(shared_data / "openwebtext-sample/openwebtext_sample.jsonl.xz"),
                               cache_dir=str(tmp_path / "hf"))["train"].train_test_split(test_size=0.1, seed=2357)
    enc = tokenizer()
    for split, ours in (("test", "val"), ("train", "train")):
        want = np.concatenate([enc.encode_ordinary(t) + [EOT] for t in ds[split]["text"]])
        assert np.array_equal(tokens(paths[ours]), want), split


def local_cfg(root, tmp_path, **kw):
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf/data/local.yaml"),
                          {"root": str(root), "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2}, kw)
    return cfg


def write_jsonl(path, texts):
    with lzma.open(path, "wt") if str(path).endswith(".xz") else open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def test_a_same_size_cache_of_other_bytes_is_rebuilt(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [f"document number {i} " * 20 for i in range(20)])
    cfg = local_cfg(tmp_path, tmp_path, train_files="a.jsonl")
    paths = prepare(cfg)
    good = tokens(paths["train"]).copy()
    with open(paths["train"], "r+b") as f:  # same size, other tokens
        f.write(np.full(10, 7, dtype=np.uint16).tobytes())
    assert verified(paths["train"]) is None
    assert np.array_equal(tokens(prepare(cfg)["train"]), good)


def test_absent_sources_are_taken_from_their_verified_cache(tmp_path, capfd):
    """A machine that carries only part of a corpus: files the cache holds stand in for their
    sources, said in one line; a damaged entry for an absent file is an error naming it."""
    (tmp_path / "books").mkdir()
    for name in ("b0", "b1"):
        write_jsonl(tmp_path / "books" / f"{name}.jsonl.xz", [f"{name} text {i} " * 30 for i in range(10)])
    cfg = local_cfg(tmp_path, tmp_path, train_files="books/*.jsonl.xz")
    full = tokens(prepare(cfg)["train"]).copy()
    (tmp_path / "books" / "b0.jsonl.xz").unlink()
    capfd.readouterr()
    assert np.array_equal(tokens(prepare(cfg)["train"]), full)
    assert "absent, their verified cached tokens used: books/b0.jsonl.xz" in capfd.readouterr().err
    entry = next((tmp_path / "cache" / "files").glob("b0.jsonl.xz-*.bin"))
    with open(entry, "r+b") as f:
        f.write(b"\x00\x01")
    with pytest.raises(FileNotFoundError, match="books/b0.jsonl.xz .* is absent and its cached tokens .* fail their checksum"):
        prepare(cfg)


@pytest.mark.parametrize("content,match", [
    ("", "no documents"),
    ('{"text": "fine"}\n{"text": broken\n', r"a\.jsonl:2: invalid JSON"),
    ('{"body": "no text field"}\n', r"a\.jsonl:1: no string field 'text'"),
])
def test_bad_data_files_name_the_file_and_line(tmp_path, content, match):
    (tmp_path / "a.jsonl").write_text(content)
    with pytest.raises(DataError, match=match):
        prepare(local_cfg(tmp_path, tmp_path, train_files="a.jsonl"))


def test_a_truncated_xz_names_the_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl.xz", ["some text " * 500] * 20)
    data = (tmp_path / "a.jsonl.xz").read_bytes()
    (tmp_path / "a.jsonl.xz").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"a\.jsonl\.xz: unreadable, truncated or damaged"):
        prepare(local_cfg(tmp_path, tmp_path, train_files="a.jsonl.xz"))


def test_a_validation_split_shorter_than_a_window_names_the_keys(tmp_path):
    from data.batches import check_length
    with pytest.raises(DataError, match="data.val_files.*data.val_fraction"):
        check_length(np.zeros(10, np.uint16), 64, "val")


def test_local_files_need_neither_datasets_nor_wandb(shared_data, tmp_path):
    """A GPU machine without datasets: local files are read with the standard library."""
    code = (f"import sys; from omegaconf import OmegaConf; from data.prepare import prepare; "
            f"cfg = OmegaConf.merge(OmegaConf.load('conf/data/local.yaml'), OmegaConf.load('conf/data/owt-sample.yaml')); "
            f"cfg.pop('defaults'); cfg.root = {str(shared_data)!r}; cfg.cache_dir = {str(tmp_path)!r}; prepare(cfg); "
            f"assert 'datasets' not in sys.modules and 'wandb' not in sys.modules, 'imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


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
    with pytest.raises(DataError, match="data=owt-sample"):
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


def test_no_bpe_files_offline_is_one_line_naming_the_variable(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(DataError, match="set TIKTOKEN_CACHE_DIR") as e:
        tokenizer()
    assert "\n" not in str(e.value)
