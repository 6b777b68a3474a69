"""Text corpora -> GPT-2 BPE token files, cached and checksummed.

Each split becomes one flat uint16 memmap (`train.bin`, `val.bin`): every document's
`encode_ordinary` tokens followed by `<|endoftext|>`, as nanoGPT and the FlashAttention
training code store OpenWebText. Beside each sits a `.json` with what it holds: the source
files (name, bytes, sha256), tokenizer, token and document counts, the document lengths'
file and a sha256 of the tokens, verified every time the split is opened (a cache of the
right size but other bytes is rebuilt, never trained on).

Local files are read with the standard library (json lines, plain text, gzip / xz / bz2),
so a run on local files imports neither datasets nor wandb. Each source file is tokenized
once into its own cache entry (`files/<name>-<sha>.bin`, keyed by the file's content, not
its time stamp); a split is the concatenation of its files' entries. A file the split was
built from that is absent later (a GPU machine that carries only part of a corpus) is taken
from its entry when the entry's checksum holds, with one line saying so: the cache then
stands in for the source. Everything is written to a temporary file and renamed (atomic).

Sources:
  local  .jsonl / .json (one JSON object a line) / .txt (a file is a document) / .parquet,
         optionally .gz / .xz / .bz2; train files and optionally val files, or val_fraction of
         the train documents held out (the permutation of datasets' train_test_split);
  hf     a Hugging Face hub dataset (`Skylion007/openwebtext`) through datasets, split with
         train_test_split(test_size, seed) when it has no validation split.
"""

import bz2
import fnmatch
import glob
import gzip
import hashlib
import json
import lzma
import math
import os
import sys
from pathlib import Path

import numpy as np

EOT = 50256
TOKENIZER = "tiktoken/gpt2"
FORMATS = (".jsonl", ".json", ".txt", ".parquet")
OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
CHUNK_DOCS = 256  # documents per tokenizer batch


class DataError(ValueError):
    """Bad input data: the message names the file (and line)."""


def tokenizer():
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and no cached BPE files
        raise DataError("could not load the GPT-2 BPE (offline?): set TIKTOKEN_CACHE_DIR to a folder holding "
                        "tiktoken's cached gpt2 files (e.g. ../shared/data/gpt2-bpe/tiktoken_cache)") from e


def _format(path):
    """(format, opener) of a data file from its name: a.jsonl.xz -> ('.jsonl', lzma.open)."""
    name, opener = Path(path).name, open
    for suffix, op in OPENERS.items():
        if name.endswith(suffix):
            name, opener = name.removesuffix(suffix), op
    ext = Path(name).suffix
    if ext not in FORMATS:
        raise DataError(f"unsupported data file {path}: expected {' / '.join(FORMATS)}, "
                        f"optionally {' / '.join(OPENERS)}")
    return ext, opener


def documents(path, text_field="text"):
    """The documents of one file, in order (a generator); bad content raises DataError naming
    the file and line."""
    ext, opener = _format(path)
    if ext == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise DataError(f"{path}: no column {text_field!r} (data.text_field); columns: {table.column_names}")
        yield from table.column(text_field).to_pylist()
        return
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if ext == ".txt":
                yield f.read()
                return
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(doc, dict) or not isinstance(doc.get(text_field), str):
                    raise DataError(f"{path}:{line_no}: no string field {text_field!r} (data.text_field)")
                yield doc[text_field]
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(f"{path}: unreadable, truncated or damaged ({type(e).__name__}: {e})") from None


def _expand(patterns, root):
    """[(pattern, [matching files])] for each pattern (relative ones under root)."""
    out = []
    for pat in [patterns] if isinstance(patterns, str) else patterns:
        pat = str(Path(root, os.path.expanduser(pat))) if root and not os.path.isabs(os.path.expanduser(pat)) \
            else os.path.expanduser(pat)
        out.append((pat, sorted(glob.glob(pat))))
    return out


def _plain(v):
    """A config value as plain Python (OmegaConf lists become lists)."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def sha256_file(path, block=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_tokens(arr):
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def _atomic_json(path, obj):
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _read_meta(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def verified(bin_path):
    """The metadata of a cached token file when its tokens are what the metadata says (size and
    sha256), else None."""
    meta = _read_meta(Path(bin_path).with_suffix(".json"))
    if not meta or not Path(bin_path).is_file() or Path(bin_path).stat().st_size != 2 * meta.get("tokens", -1):
        return None
    arr = np.memmap(bin_path, dtype=np.uint16, mode="r") if meta["tokens"] else np.zeros(0, np.uint16)
    return meta if sha256_tokens(arr) == meta.get("sha256") else None


def _write_split(bin_path, pieces, meta):
    """Writes the concatenated token arrays `pieces` to bin_path (atomically) and its metadata."""
    total = sum(len(p) for p in pieces)
    tmp = f"{bin_path}.tmp{os.getpid()}"
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        for p in pieces:
            b = memoryview(np.ascontiguousarray(p, dtype=np.uint16)).cast("B")
            f.write(b)
            h.update(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, bin_path)
    _atomic_json(Path(bin_path).with_suffix(".json"), {**meta, "tokens": total, "sha256": h.hexdigest(),
                                                      "dtype": "uint16", "tokenizer": TOKENIZER, "eot": EOT})


def tokenize_file(path, text_field, cache, name, threads=None):
    """The cache entry (metadata dict) of one source file, tokenized if not cached yet; `name`:
    its path under data.root."""
    sha = sha256_file(path)
    entry = Path(cache) / "files" / f"{Path(path).name}-{sha[:16]}.bin"
    meta = verified(entry)
    if meta and meta.get("source_sha256") == sha and meta.get("text_field") == text_field and meta["source"] == name:
        return {**meta, "bin": str(entry)}
    entry.parent.mkdir(parents=True, exist_ok=True)
    enc, threads = tokenizer(), threads or min(32, os.cpu_count() or 1)
    pieces, lengths, batch = [], [], []

    def flush():
        for ids in enc.encode_ordinary_batch(batch, num_threads=threads):
            ids.append(EOT)
            pieces.append(np.asarray(ids, dtype=np.uint16))
            lengths.append(len(ids))
        batch.clear()

    for doc in documents(path, text_field):
        batch.append(doc)
        if len(batch) == CHUNK_DOCS:
            flush()
    flush()
    if not lengths:
        raise DataError(f"{path}: no documents")
    np.save(entry.with_suffix(".docs.npy"), np.asarray(lengths, dtype=np.int64))
    _write_split(entry, pieces, {"source": name, "source_bytes": os.path.getsize(path), "source_sha256": sha,
                                 "text_field": text_field, "documents": len(lengths)})
    print(f"tokenized {path}: {len(lengths):,} documents, {sum(lengths):,} tokens", file=sys.stderr, flush=True)
    return {**verified(entry), "bin": str(entry)}


def _cached_entries(cache):
    """{source path (as its pattern named it): [entry metadata, not yet verified]} of every cached file."""
    found = {}
    for meta_path in sorted((Path(cache) / "files").glob("*.json")):
        meta = _read_meta(meta_path)
        if meta and "source" in meta:
            found.setdefault(meta["source"], []).append({**meta, "bin": str(meta_path.with_suffix(".bin"))})
    return found


def _file_entries(patterns, root, text_field, cache, key):
    """[(pattern, cache entry)] of the files `patterns` name: the files found now, and cached files
    whose source path matches a pattern but is absent now (a machine that holds only part of
    the corpus, or only its cache), named in one line."""
    entries, stood_in, cached = [], [], None
    for pat, hits in _expand(patterns, root):
        rel = _source_name(pat, root)
        found = {_source_name(h, root): h for h in hits}
        cached = _cached_entries(cache) if cached is None else cached
        absent = {name: metas for name, metas in cached.items() if fnmatch.fnmatchcase(name, rel) and name not in found}
        if not found and not absent:
            raise FileNotFoundError(f"no data file matches {pat} (data.{key}); set data.root (or the DATA "
                                    "environment variable) to the folder that holds the corpus")
        for name in sorted(set(found) | set(absent)):
            if name in found:
                entries.append((pat, tokenize_file(found[name], text_field, cache, name)))
                continue
            metas = [m for m in absent[name] if m.get("text_field") == text_field and verified(m["bin"])]
            if not metas:
                raise FileNotFoundError(f"{name} (data.{key}) is absent and its cached tokens under {cache}/files "
                                        "fail their checksum: put the file back")
            if len(metas) > 1:
                raise FileNotFoundError(f"{name} (data.{key}) is absent and {len(metas)} cached versions of it "
                                        f"exist under {cache}/files: put the file back or delete the stale entries")
            stood_in.append(name)
            entries.append((pat, metas[0]))
    if stood_in:
        print(f"data.{key}: {len(stood_in)} source file(s) absent, their verified cached tokens used: "
              f"{', '.join(stood_in)}", file=sys.stderr, flush=True)
    return entries


def _source_name(path, root):
    """A source file's name in the cache: its path under data.root (the same on every machine), else absolute."""
    path = os.path.abspath(path)
    root = os.path.abspath(root) if root else None
    return os.path.relpath(path, root) if root and path.startswith(root + os.sep) else path


def _hold_out(n_docs, fraction, seed):
    """(train indices, val indices) as datasets' train_test_split(test_size=fraction, seed) draws them."""
    n_val = math.ceil(fraction * n_docs)
    n_train = n_docs - n_val
    if n_val < 1 or n_train < 1:
        raise DataError(f"data.val_fraction={fraction} of {n_docs} documents leaves an empty split; "
                        "set data.val_files or another data.val_fraction")
    perm = np.random.default_rng(seed).permutation(n_docs)
    return perm[n_val:n_val + n_train], perm[:n_val]


def _documents_of(entries):
    """(token arrays of every document, in order) across cache entries."""
    docs = []
    for meta in entries:
        arr = np.memmap(meta["bin"], dtype=np.uint16, mode="r")
        ends = np.cumsum(np.load(Path(meta["bin"]).with_suffix(".docs.npy")))
        docs += np.split(arr, ends[:-1])
    return docs


def _component(pat, meta):
    return {"pattern": pat, "source": meta["source"], "source_sha256": meta["source_sha256"],
            "tokens": meta["tokens"], "sha256": meta["sha256"]}


def prepare_local(cfg, out):
    spec = {"source": "local", "text_field": cfg.text_field, "val_fraction": cfg.get("val_fraction"),
            "split_seed": cfg.get("split_seed"), "max_docs": cfg.get("max_docs")}
    keys = ["train_files"] + (["val_files"] if cfg.get("val_files") else [])
    entries = {k: _file_entries(cfg[k], cfg.root, cfg.text_field, out.parent, k) for k in keys}
    components = {k: [_component(p, m) for p, m in entries[k]] for k in keys}
    want = {"train": {**spec, "components": components["train_files"]}}
    if "val_files" in keys:
        want["val"] = {**spec, "components": components["val_files"]}
    else:
        want["val"] = {**spec, "components": components["train_files"], "held_out": True}
    paths = {s: out / f"{s}.bin" for s in ("train", "val")}
    if all((m := verified(paths[s])) and all(m.get(k) == v for k, v in want[s].items()) for s in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    train_docs = _documents_of([m for _, m in entries["train_files"]])
    if "val_files" in keys:
        val_docs = _documents_of([m for _, m in entries["val_files"]])
    else:
        train_idx, val_idx = _hold_out(len(train_docs), cfg.val_fraction, cfg.split_seed)
        train_docs, val_docs = [train_docs[i] for i in train_idx], [train_docs[i] for i in val_idx]
    if cfg.get("max_docs"):
        train_docs, val_docs = train_docs[:cfg.max_docs], val_docs[:cfg.max_docs]
    for s, docs in (("train", train_docs), ("val", val_docs)):
        lengths = np.asarray([len(d) for d in docs], dtype=np.int64)
        np.save(paths[s].with_suffix(".docs.npy"), lengths)
        _write_split(paths[s], docs, {**want[s], "documents": len(docs)})
    return paths


def prepare_hf(cfg, out):
    """The hub corpus through datasets (split as nanoGPT splits OpenWebText)."""
    spec = {"source": "hf", "hf_path": cfg.hf_path, "text_field": cfg.text_field,
            "val_fraction": cfg.get("val_fraction"), "split_seed": cfg.get("split_seed"), "max_docs": cfg.get("max_docs")}
    paths = {s: out / f"{s}.bin" for s in ("train", "val")}
    if all((m := verified(paths[s])) and all(m.get(k) == v for k, v in spec.items()) for s in paths):
        return paths
    import datasets
    try:
        ds = datasets.load_dataset(cfg.hf_path, num_proc=cfg.get("num_proc") or None)
    except Exception as e:
        raise DataError(
            f"could not load {cfg.hf_path} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). "
            "Offline? Use a local corpus instead: data=owt-sample (OpenWebText sample), data=webtext-sample, "
            "data=gutenberg, or data=local data.train_files=[...]") from e
    if "validation" in ds:
        splits = {"train": ds["train"], "val": ds["validation"]}
    else:
        split = ds["train"].train_test_split(test_size=cfg.val_fraction, seed=cfg.split_seed, shuffle=True)
        splits = {"train": split["train"], "val": split["test"]}
    enc = tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    for s, d in splits.items():
        if cfg.get("max_docs"):
            d = d.select(range(min(cfg.max_docs, len(d))))
        tok = d.map(lambda b: {"ids": [x + [EOT] for x in enc.encode_ordinary_batch(b[cfg.text_field])]},
                    batched=True, remove_columns=d.column_names, num_proc=cfg.get("num_proc") or None,
                    desc=f"tokenizing {s}")
        pieces = [np.asarray(x, dtype=np.uint16) for x in tok["ids"]]
        np.save(paths[s].with_suffix(".docs.npy"), np.asarray([len(p) for p in pieces], dtype=np.int64))
        _write_split(paths[s], pieces, {**spec, "documents": len(pieces)})
    return paths


def prepare(cfg):
    """Token files for cfg's corpus, built if needed and verified. Returns {'train': path, 'val': path}."""
    if cfg.source not in ("local", "hf"):
        raise DataError(f"data.source={cfg.source!r}: local | hf")
    cache = Path(os.path.expanduser(cfg.cache_dir))
    # The split's name in the cache: what the config says it holds (not where the files lie, so a
    # machine with the corpus elsewhere, or only its cache, finds it).
    spec = {k: _plain(cfg.get(k)) for k in ("name", "source", "hf_path", "train_files", "val_files",
                                              "val_fraction", "split_seed", "max_docs", "text_field")}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = cache / f"{cfg.name}-{key}"
    paths = (prepare_local if cfg.source == "local" else prepare_hf)(cfg, out)
    return {s: str(p) for s, p in paths.items()}


if __name__ == "__main__":  # python -m data.prepare: build (or verify) the cache of a data config
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    def main(cfg: DictConfig):
        from hydra.utils import to_absolute_path
        d = cfg.data.copy()
        d.cache_dir = to_absolute_path(os.path.expanduser(d.cache_dir))
        if d.get("root"):
            d.root = to_absolute_path(os.path.expanduser(d.root))
        for s, p in prepare(d).items():
            m = _read_meta(Path(p).with_suffix(".json"))
            print(f"{s}: {p} | {m['documents']:,} documents | {m['tokens']:,} tokens | sha256 {m['sha256'][:16]}")

    main()
