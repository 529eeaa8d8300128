"""The cost-aware objective: per-op costs counted by hand, the penalty steers alphas to cheap ops, genotype cost."""

import torch

from dass.search import make_config
from dass.search.cost import CostObjective, edge_op_costs, genotype_cost
from dass.search.searcher import DassSearch
from dass.space import Supernet, SupernetConfig
from dass.sparse.layers import kept_count

OPS = ["max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def test_costs_count_nonzero_macs_by_hand():
    model = Supernet(SupernetConfig(init_channels=4, layers=3, nodes=1, multiplier=1, ops=OPS))
    costs = edge_op_costs(model, (3, 8, 8), sparsity=0.9)
    # cell 0 is the one normal cell (cells 1 and 2 reduce), 2 edges at 8x8 with 4 channels: pooling and skip cost nothing; sep_conv_3x3 is
    # (depthwise 3x3 + pointwise) twice: weights 36 and 16 per pair, kept per layer at 10%
    expected = 2 * 64 * (kept_count(36, 0.1) + kept_count(16, 0.1))
    assert costs["normal"][:, 0].tolist() == [0, 0] and costs["normal"][:, 1].tolist() == [0, 0]
    assert costs["normal"][:, 2].tolist() == [expected, expected]
    # in reduction cells skip_connect is a FactorizedReduce (two 1x1 convs): it costs too
    assert float(costs["reduce"][:, 0].sum()) == 0 and float(costs["reduce"][:, 1:].min()) > 0


def test_penalty_moves_alphas_to_cheap_ops():
    torch.manual_seed(0)
    model = Supernet(SupernetConfig(init_channels=4, layers=3, nodes=1, multiplier=1, ops=OPS))
    objective = CostObjective(model, edge_op_costs(model, (3, 8, 8), 0.9), weight=1.0)
    assert abs(float(objective.penalty()) - 1.0) < 0.01    # normalized: ~1 at near-uniform alphas
    opt = torch.optim.Adam([model.alphas_normal, model.alphas_reduce], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        objective.penalty().backward()
        opt.step()
    normal = torch.softmax(model.alphas_normal.detach(), -1)
    reduce = torch.softmax(model.alphas_reduce.detach(), -1)
    assert (normal[:, 2] < 0.1).all()    # sep_conv, the only normal-cell op with a cost, lost its weight
    assert (reduce[:, 0] > 0.8).all()    # in reduction cells only pooling is free


def test_search_reports_the_cost_of_its_genotype(tmp_path):
    sets = ["search.epochs.warmup=1", "search.epochs.prune=1", "search.epochs.finetune=0", "data.subset=64",
            "search.cost_weight=0.5"]
    run = DassSearch.create(make_config("default", sets=sets), str(tmp_path / "s"), progress=False)
    result = run.run()
    meta = result.genotype.meta
    costs = edge_op_costs(run.model, run.input_shape, 0.9, budget=run.config.search.budget)
    assert meta["cost_macs"] == genotype_cost(result.genotype, costs, list(run.config.model.ops), 4) > 0
    records = run.run_dir.log_records()
    assert all("expected_cost_macs" in r for r in records)
