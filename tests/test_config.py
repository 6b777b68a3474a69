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
