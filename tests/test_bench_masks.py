"""benchmarks/bench_masks.py without a GPU: every case's Flex mask_mod keeps exactly the pairs our
kernel's mask keeps, and the visible pairs and tiles are counted right."""

import pytest
import torch

from attention.naive import mask as visible
from benchmarks import bench_masks as bm


def dense_from_mask_mod(case, batch):
    n = case["n"]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return torch.stack([bm.mask_mod(case, "cpu")(b, 0, i, j) for b in range(batch)])


@pytest.mark.parametrize("case", [bm.blocksparse_case(300, 1 / 4, 2), bm.documents_case(300, 40, 2),
                                  bm.window_case(300, 37)], ids=lambda c: c["name"])
def test_flex_mask_equals_ours_and_counts(case):
    batch = 2
    kw = bm.ours_kwargs(case, "cpu")
    ours = visible(300, 300, "cpu", kw.get("window"), kw.get("documents"), kw.get("block_mask"), case["causal"])
    ours = ours.expand(batch, 1, 300, 300)[:, 0]
    flex = dense_from_mask_mod(case, batch)
    assert torch.equal(ours, flex)
    pairs, tiles = bm.visible_pairs(case, batch)
    assert pairs == int(flex.sum())
    nb = -(-300 // bm.BLOCK)
    pad = torch.zeros(batch, nb * bm.BLOCK, nb * bm.BLOCK, dtype=torch.bool)
    pad[:, :300, :300] = flex
    assert tiles == pytest.approx(pad.view(batch, nb, bm.BLOCK, nb, bm.BLOCK).any(4).any(2).float().mean().item())


def test_the_cases_of_the_issue():
    names = [c["name"] for c, _ in bm.cases("blocksparse,documents,window", 12)]
    assert {"blocksparse 1/2", "blocksparse 1/16", "documents, mean 512", "documents, mean 2048", "window 1024"} <= set(names)
    case = bm.blocksparse_case(4096, 1 / 8, 12)
    assert abs(case["layout"].float().mean().item() - 1 / 8) < 0.05


def test_an_unknown_provider_is_one_clear_error(tmp_path, capsys):
    from benchmarks.bench_masks import main
    with pytest.raises(SystemExit):
        main(["--providers", "ours,sdpa", "--out", str(tmp_path)])
    assert "--providers 'ours,sdpa': ours and/or flex" in capsys.readouterr().err
