"""Every conf/ combination composes; bad choices fail with one clear message."""

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("model,attention,data", itertools.product(options("model"), options("attention"), options("data")))
def test_every_combination_composes(model, attention, data):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", [f"model={model}", f"attention={attention}", f"data={data}", "context=2048"],
                      return_hydra_config=True)
    assert cfg.model.name == model and cfg.attention.name == attention and cfg.context == 2048
    OmegaConf.resolve(cfg.model)
    OmegaConf.resolve(cfg.attention)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(experiment):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}"])
    assert cfg.train.max_steps > 0


@pytest.mark.parametrize("attention", options("attention"))
def test_each_backend_config_lists_its_options(attention):
    """conf/attention/NAME.yaml names every option its module declares (OPTIONS), so that
    `attention.options.KEY=VALUE` works on the command line without Hydra's `+`; flash's are null
    there (the module's default), sdpa's kernel too (torch chooses)."""
    from attention import options_of
    listed = OmegaConf.load(CONF / "attention" / f"{attention}.yaml").get("options") or {}
    assert set(listed) == set(options_of(attention)), attention
    if attention == "flash":
        assert all(v is None for v in listed.values())
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("config", ["attention=flash", "attention.options.autotune=false", "attention.options.gluon=auto"])
        assert cfg.attention.options.autotune is False and cfg.attention.options.gluon == "auto"


def test_unknown_attention_choice_is_rejected():
    from hydra.errors import MissingConfigException
    with initialize_config_dir(str(CONF), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="attention"):
            compose("config", ["attention=fast"])


@pytest.mark.parametrize("attention", options("attention"))
def test_generate_config_composes(attention):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("generate", ["init_from=runs/x", f"attention={attention}"])
    assert cfg.attention.name == attention and cfg.max_new_tokens > 0 and cfg.cache


def test_model_defaults_live_once_and_match_the_model():
    """conf/config.yaml holds the model keys every size shares, equal to GPTConfig's defaults
    (the Python API's); a size file holds only its architecture."""
    import dataclasses
    from model.gpt import GPTConfig
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config")
    defaults = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    shared = {k: v for k, v in cfg.model.items() if k not in ("name", "impl", "n_layer", "n_head", "n_embd")}
    assert shared and all(defaults[k] == v for k, v in shared.items()), shared
    assert cfg.model.n_layer == defaults["n_layer"] and cfg.model.n_embd == defaults["n_embd"]  # gpt2-small
    for size in options("model"):
        assert set(OmegaConf.load(CONF / "model" / f"{size}.yaml")) == {"name", "n_layer", "n_head", "n_embd"}, size


def test_a_checkpoint_from_before_the_mask_keys_resumes():
    """model.window, model.documents and the block-sparse keys are fixed on resume; a checkpoint
    written before they existed holds none, and means no window, document masking or layout."""
    from training.config import UserError, resume_changes
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config")
    saved = OmegaConf.to_container(cfg)
    for key in ("window", "documents", "block_sparse", "sparse_block"):
        del saved["model"][key]
    assert resume_changes(saved, cfg) == []
    with initialize_config_dir(str(CONF), version_base="1.3"):
        masked = compose("config", ["model.documents=true"])
    with pytest.raises(UserError, match="model.documents is False in the checkpoint and True now"):
        resume_changes(saved, masked)


@pytest.mark.parametrize("overrides,message", [
    (["model.block_sparse=butterfly", "attention=sdpa"], "model.block_sparse needs model.impl=ours and attention=flash"),
    (["model.block_sparse=butterfly", "attention=flash", "model.window=256"], "does not combine with model.window"),
    (["model.block_sparse=bands", "attention=flash"], "model.block_sparse="),
    (["model.block_sparse=butterfly", "attention=flash", "model.sparse_block=0"], "model.sparse_block=0"),
])
def test_block_sparse_choices_are_checked(overrides, message):
    from training.config import UserError, check
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides)
    with pytest.raises(UserError, match=message):
        check(cfg)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        check(compose("config", ["model.block_sparse=butterfly", "attention=flash"]))
