"""training/logger.py: the same rows to metrics.jsonl and wandb; nothing from other ranks."""

import json

from omegaconf import OmegaConf

from training.logger import Logger

CFG = OmegaConf.create({"wandb": {"mode": "disabled", "project": "p", "entity": None, "group": "g", "name": "n",
                                  "tags": []}})


def test_rows_go_to_metrics_jsonl_and_the_median_skips_the_first_interval(tmp_path):
    log = Logger(CFG, tmp_path, None)
    for step, rate in [(10, 1.0), (20, 100.0), (30, 300.0), (40, 200.0)]:
        log.log({"train/loss": 1.0 / step, "tokens_per_s": rate}, step)
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40] and rows[0]["train/loss"] == 0.1
    assert log.wandb.summary["tokens_per_s_median"] == 200.0  # of 100, 300, 200: compile time left out


def test_other_ranks_write_nothing(tmp_path):
    log = Logger(CFG, tmp_path, "run-id", enabled=False)
    log.log({"train/loss": 1.0}, 1)
    log.close()
    assert log.run_id == "run-id" and not list(tmp_path.iterdir())
