"""Text corpora -> GPT-2 BPE token files, cached.

Each split becomes one flat uint16 memmap (`train.bin`, `val.bin`): every document's
`encode_ordinary` tokens followed by `<|endoftext|>`, as nanoGPT and the FlashAttention
training code store OpenWebText. Beside each sits a `.json` with the source, tokenizer and
token count. The cache does not depend on the context length, is written to a temporary file
and renamed into place (atomic), and is reused while its metadata matches the source; a
missing, stale or truncated cache is rebuilt.

Sources:
  hf     a Hugging Face hub dataset (`Skylion007/openwebtext`), split with
         train_test_split(test_size, seed) when it has no validation split;
  local  jsonl / json / text / parquet files (compressed too) through datasets' builders,
         with named train and (optionally) val files.
"""

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np

EOT = 50256
BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def tokenizer():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and no cached BPE files
        raise RuntimeError("could not load the GPT-2 BPE: set TIKTOKEN_CACHE_DIR to a folder holding "
                           "tiktoken's cached gpt2 files (e.g. ../shared/data/gpt2-bpe/tiktoken_cache)") from e


def _builder(path):
    name = Path(path).name
    for suffix in (".gz", ".xz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    ext = Path(name).suffix
    if ext not in BUILDERS:
        raise ValueError(f"unsupported data file {path}: expected one of {', '.join(BUILDERS)} (optionally compressed)")
    return BUILDERS[ext]


def _expand(patterns, root):
    files = []
    for pat in [patterns] if isinstance(patterns, str) else patterns:
        pat = str(Path(root, pat)) if root and not os.path.isabs(pat) else pat
        hits = sorted(glob.glob(pat))
        if not hits:
            raise FileNotFoundError(f"no data file matches {pat}; set data.root (or the DATA environment "
                                    "variable) to the folder that holds the corpus")
        files += hits
    return files


def load_splits(cfg):
    """The raw text splits {'train': Dataset, 'val': Dataset} that cfg describes."""
    import datasets
    if cfg.source == "hf":
        try:
            ds = datasets.load_dataset(cfg.hf_path, num_proc=cfg.get("num_proc") or None)
        except Exception as e:
            raise RuntimeError(
                f"could not load {cfg.hf_path} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). "
                "Offline? Use a local corpus instead: data=owt-sample (OpenWebText sample), data=webtext-sample, "
                "data=gutenberg, or data=local data.train_files=[...]") from e
        if "validation" in ds:
            return {"train": ds["train"], "val": ds["validation"]}
        split = ds["train"].train_test_split(test_size=cfg.val_fraction, seed=cfg.split_seed, shuffle=True)
        return {"train": split["train"], "val": split["test"]}
    if cfg.source == "local":
        files = {"train": _expand(cfg.train_files, cfg.root)}
        if cfg.get("val_files"):
            files["val"] = _expand(cfg.val_files, cfg.root)
        builder = _builder(files["train"][0])
        ds = datasets.load_dataset(builder, data_files=files, cache_dir=cfg.get("hf_cache_dir"))
        if "val" in ds:
            return {"train": ds["train"], "val": ds["val"]}
        split = ds["train"].train_test_split(test_size=cfg.val_fraction, seed=cfg.split_seed, shuffle=True)
        return {"train": split["train"], "val": split["test"]}
    raise ValueError(f"unknown data.source {cfg.source!r}; available: hf, local")


def fingerprint(cfg):
    """What the cached tokens depend on: the source (with file sizes and times) and the split."""
    spec = {"source": cfg.source, "tokenizer": "tiktoken/gpt2", "eot": EOT,
            "val_fraction": cfg.get("val_fraction"), "split_seed": cfg.get("split_seed"), "text_field": cfg.text_field}
    if cfg.source == "hf":
        spec["hf_path"] = cfg.hf_path
    else:
        for key in ("train_files", "val_files"):
            if cfg.get(key):
                spec[key] = [(Path(f).name, os.path.getsize(f), int(os.path.getmtime(f)))
                             for f in _expand(cfg[key], cfg.root)]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16], spec


def _valid(bin_path, meta_path, fp):
    try:
        meta = json.loads(Path(meta_path).read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("fingerprint") == fp and Path(bin_path).is_file()
            and Path(bin_path).stat().st_size == 2 * meta.get("tokens", -1))


def _write_tokens(dataset, text_field, bin_path, num_proc):
    enc = tokenizer()

    def encode(batch):
        ids = [enc.encode_ordinary(t) + [EOT] for t in batch[text_field]]
        return {"ids": ids, "len": [len(x) for x in ids]}

    tok = dataset.map(encode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
                      desc=f"tokenizing {Path(bin_path).name}")
    total = int(np.sum(tok["len"], dtype=np.int64))
    tmp = f"{bin_path}.tmp{os.getpid()}"
    arr = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(max(total, 1),))
    from tqdm import tqdm
    shards = max(1, min(1024, len(tok) // 1000))
    pos = 0
    for i in tqdm(range(shards), desc=f"writing {Path(bin_path).name}"):
        chunk = np.concatenate(tok.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")["ids"])
        arr[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    arr.flush()
    del arr
    if total == 0:
        os.truncate(tmp, 0)
    return tmp, total


def prepare(cfg):
    """Token files for cfg's corpus, built if needed. Returns {'train': path, 'val': path}."""
    fp, spec = fingerprint(cfg)
    out = Path(os.path.expanduser(cfg.cache_dir)) / f"{cfg.name}-{fp}"
    paths = {s: out / f"{s}.bin" for s in ("train", "val")}
    if all(_valid(p, p.with_suffix(".json"), fp) for p in paths.values()):
        return {s: str(p) for s, p in paths.items()}
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(cfg)
    for split, ds in splits.items():
        if cfg.get("max_docs"):
            ds = ds.select(range(min(cfg.max_docs, len(ds))))
        tmp, total = _write_tokens(ds, cfg.text_field, paths[split], cfg.get("num_proc") or None)
        os.replace(tmp, paths[split])
        meta = {"fingerprint": fp, "tokens": total, "documents": len(ds), "dtype": "uint16", **spec}
        tmp_meta = paths[split].with_suffix(f".json.tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, paths[split].with_suffix(".json"))
    return {s: str(p) for s, p in paths.items()}
