"""PC-DARTS mode: partial channels with edge normalization, on the sparse ops and through the DASS phases."""

import pytest
import torch

from dass.errors import DassError
from dass.search import make_config
from dass.search.searcher import DassSearch
from dass.space import Supernet, SupernetConfig
from dass.space.mixed import channel_shuffle
from dass.sparse import set_sparsity, init_scores


def test_channel_shuffle_is_a_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    y = channel_shuffle(x, 4)
    assert sorted(y.flatten().tolist()) == list(range(8))
    assert y.flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_partial_supernet_trains_alphas_and_betas():
    torch.manual_seed(0)
    full = Supernet(SupernetConfig(init_channels=8, layers=3))
    pc = Supernet(SupernetConfig(init_channels=8, layers=3, partial_channels=4))
    n_full = sum(p.numel() for p in full.weight_parameters())
    n_pc = sum(p.numel() for p in pc.weight_parameters())
    assert n_pc < 0.5 * n_full  # the edge ops see a quarter of the channels
    assert len(pc.arch_parameters()) == 4 and len(full.arch_parameters()) == 2
    init_scores(pc)
    set_sparsity(pc, 0.9)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(pc(x), y)
    grads = torch.autograd.grad(loss, pc.arch_parameters())
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    with torch.no_grad():   # edge weights take part in the choice of edges
        pc.betas_normal.zero_()
        pc.betas_normal[1] = 10.0   # node 0: input 1 strongly preferred
    genotype = pc.genotype()
    genotype.validate()
    assert {j for _, j in genotype.normal[:2]} == {0, 1}


def test_partial_channels_search_runs_all_phases(tmp_path):
    config = make_config("default", sets=["model.partial_channels=4", "search.epochs.warmup=1",
                                          "search.epochs.prune=1", "search.epochs.finetune=1", "data.subset=64"])
    run = DassSearch.create(config, str(tmp_path / "pc"), progress=False)
    result = run.run()
    result.genotype.validate()
    assert "betas_normal" in dict(run.model.named_parameters())


def test_partial_channels_must_divide_channels():
    with pytest.raises(DassError, match="partial_channels"):
        make_config("default", sets=["model.partial_channels=3"]).validate()
