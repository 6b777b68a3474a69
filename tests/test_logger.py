"""training/logger.py: the same rows to metrics.jsonl and wandb; nothing from other ranks."""

import json

from omegaconf import OmegaConf

from training.logger import Logger

CFG = OmegaConf.create({"wandb": {"mode": "disabled", "project": "p", "entity": None, "group": "g", "name": "n",
                                  "tags": []}})


def test_rows_go_to_metrics_jsonl_and_the_median_skips_the_first_interval(tmp_path):
    log = Logger(OmegaConf.merge(CFG, {"wandb": {"mode": "offline"}}), tmp_path, None)
    for step, rate in [(10, 1.0), (20, 100.0), (30, 300.0), (40, 200.0)]:
        log.log({"train/loss": 1.0 / step, "tokens_per_s": rate}, step)
    finish, log.wandb.finish = log.wandb.finish, lambda: None  # read the summary before the run closes
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40] and rows[0]["train/loss"] == 0.1
    assert log.wandb.summary["tokens_per_s_median"] == 200.0  # of 100, 300, 200: compile time left out
    finish()


def test_other_ranks_write_nothing(tmp_path):
    log = Logger(CFG, tmp_path, "run-id", enabled=False)
    log.log({"train/loss": 1.0}, 1)
    log.close()
    assert log.run_id == "run-id" and not list(tmp_path.iterdir())


def test_disabled_writes_metrics_without_wandb(tmp_path):
    log = Logger(CFG, tmp_path, None)
    log.log({"train/loss": 1.0}, 1)
    log.close()
    assert log.wandb is None and json.loads((tmp_path / "metrics.jsonl").read_text())["train/loss"] == 1.0


def test_auto_mode_prints_no_deprecation_warning(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    log = Logger(OmegaConf.merge(CFG, {"wandb": {"mode": "auto"}}), tmp_path, None)
    log.close()
    out, err = capfd.readouterr()
    assert "deprecated" not in out + err


def test_a_run_id_still_held_by_a_killed_run_falls_back_to_a_new_wandb_run(tmp_path, monkeypatch, capfd):
    """After kill -9, the dead run's wandb service may hold the run id a resumed run asks for."""
    import wandb

    from training import logger
    real_init, calls = wandb.init, []

    def init(**kw):
        calls.append(kw.get("id"))
        if kw.get("id") == "held":
            raise RuntimeError("run ID held is in use")
        return real_init(**kw)
    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(logger.time, "sleep", lambda s: None)
    log = Logger(OmegaConf.merge(CFG, {"wandb": {"mode": "offline"}}), tmp_path, "held")
    log.close()
    assert calls == ["held"] * (logger.RETRIES + 1) + [None] and log.run_id != "held"
    assert f"run id held is still held (its process was killed?); logging to a new wandb run {log.run_id}" in capfd.readouterr().err
