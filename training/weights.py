"""Weights from elsewhere into our GPT: `train.init_from`, generate.py, scoring, export.

A source is one of
- our checkpoint: a run's ckpt-<step>.pt, or the run directory (its newest good checkpoint;
  training/checkpoints.py reads it);
- a transformers GPT-2 folder (config.json + model.safetensors), e.g. one export wrote;
- `hf:NAME`, a hub model such as hf:gpt2 (needs the network, or the hub cache).

Only weights move: the optimizer, schedule and step start fresh (model/pretrained.py adapts the
vocabulary padding and the position table).

    python -m training.weights export runs/RUN OUT_DIR    # a GPT2LMHeadModel folder
"""

from pathlib import Path

from model.pretrained import load_state, read_hf
from training import checkpoints


def read(source):
    """(state dict in our layout, architecture dict, description) of a source (see above)."""
    source = str(source)
    if source.startswith("hf:"):
        return read_hf(source[3:], source)
    path = Path(source).expanduser()
    loaded = checkpoints.weights(path)
    if loaded is not None:
        return loaded
    if path.is_dir() and (path / "config.json").is_file():
        return read_hf(str(path), f"transformers folder {path}")
    raise FileNotFoundError(f"init_from: {source} is neither a checkpoint (ckpt-<step>.pt or a run directory holding one), "
                            "a transformers GPT-2 folder (config.json + weights) nor hf:NAME")


def load_into(model, source, positions="copy"):
    """Load a source's weights into our GPT `model` (same architecture); returns a one-line
    account of what was loaded and what was adapted."""
    return load_state(model, read(source), source, positions)


def load_model(source, attention="sdpa", attention_options=None, context=None, positions="copy"):
    """Our GPT with a source's architecture and weights (context: the source's, or longer with
    the position table extended), attention through the given backend; returns (model, account)."""
    from model.gpt import GPT, GPTConfig
    loaded = read(source)
    arch = loaded[1] | ({"context": context} if context else {})
    model = GPT(GPTConfig(**arch, attention=attention, attention_options=attention_options or {}))
    return model, load_state(model, loaded, source, positions)


def main(argv=None):
    import argparse
    from model.hf import export
    p = argparse.ArgumentParser(prog="python -m training.weights", description="our weights out to transformers")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a GPT2LMHeadModel folder (config, safetensors, tokenizer)")
    e.add_argument("source", help="a run directory (its newest checkpoint), a ckpt-<step>.pt, or another source")
    e.add_argument("out_dir")
    e.add_argument("--tokenizer", help="folder with GPT-2's encoder.json and vocab.bpe")
    a = p.parse_args(argv)
    try:
        export(read(a.source), a.out_dir, a.tokenizer)
    except (ValueError, FileNotFoundError) as err:
        p.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
