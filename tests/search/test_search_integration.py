"""A tiny but complete DASS search on real CIFAR-10 images."""

import json

import torch

from dass.search import make_config
from dass.search.searcher import DassSearch
from dass.sparse import density_report
from dass.sparse.layers import kept_count
from dass.space import Genotype


def test_tiny_search_on_cifar_subset(cifar_subset, tmp_path):
    config = make_config("default", {
        "data": {"dataset": str(cifar_subset), "subset": 256, "crop_padding": 4, "flip": True},
        "model": {"init_channels": 4, "layers": 3},
        "search": {"sparsity": 0.8, "batch_size": 32, "order": 1, "epochs": {"warmup": 3, "prune": 2, "finetune": 2},
                   "budget": "uniform"},   # (every layer at the same keep ratio: checked below)
        "threads": 2,
    })
    runner = DassSearch.create(config, str(tmp_path / "run"), progress=False)
    alphas_before = [a.detach().clone() for a in runner.model.arch_parameters()]
    result = runner.run()

    genotype = Genotype.load(tmp_path / "run" / "genotype.json")
    assert genotype == result.genotype
    assert genotype.meta["sparsity"] == 0.8
    for _, layer_density in enumerate(density_report(result.model)):
        assert layer_density.nonzero == kept_count(layer_density.total, 0.2), layer_density.name
    moved = [float((a.detach() - b).abs().max()) for a, b in zip(result.model.arch_parameters(), alphas_before)]
    assert min(moved) > 1e-3, moved

    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["warmup"] * 3 + ["prune"] * 2 + ["finetune"] * 2
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[0]["density"] == 1.0 and abs(records[-1]["density"] - 0.2) < 1e-3
    for key in ("train_acc", "val_loss", "val_acc", "alphas", "genotype", "seconds_per_step"):
        assert key in records[-1]
    for name in ("alphas.png", "cells.png", "config.yaml", "checkpoint.pt"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_single_loop_trains_weights_scores_and_alphas(tmp_path):
    config = make_config("default", {
        "data": {"subset": 128},
        "model": {"init_channels": 4, "layers": 3, "nodes": 2, "multiplier": 2},
        "search": {"mode": "single_loop", "single_loop_epochs": 1, "sparsity": 0.9, "batch_size": 32, "order": 2,
                   "budget": "uniform"},
        "threads": 2,
    })
    runner = DassSearch.create(config, str(tmp_path / "run"), progress=False)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    result = runner.run()
    after = result.model.state_dict()
    changed = lambda suffix: [k for k in after if k.endswith(suffix) and not torch.equal(after[k], before[k])]
    assert changed("alphas_normal") and changed("alphas_reduce")
    assert len(changed(".scores")) > 10 and len(changed(".weight")) > 10
    for row in density_report(result.model):
        assert row.nonzero == kept_count(row.total, 0.1)
