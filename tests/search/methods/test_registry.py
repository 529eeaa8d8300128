"""Search methods as classes: the registry, and a variant that overrides one hook."""

import pytest
import torch

from dass.errors import DassError
from dass.search import make_config
from dass.search.methods import METHODS, Darts, SearchMethod, available_methods, get_method, register_method
from dass.search.searcher import DassSearch

TINY = ["search.epochs.warmup=1", "search.epochs.prune=1", "search.epochs.finetune=1", "data.subset=64",
        "model.init_channels=4", "model.layers=2"]


def test_registry_lists_the_methods_and_refuses_unknown_ones():
    assert {"darts", "proxyless"} <= set(available_methods())
    assert get_method("darts") is Darts
    with pytest.raises(DassError, match="unknown search method 'enas'"):
        make_config("default", sets=["search.method=enas"])
    with pytest.raises(ValueError, match="non-empty name"):
        register_method(type("Nameless", (SearchMethod,), {}))


def test_a_variant_overrides_one_hook_and_the_run_uses_it(tmp_path):
    @register_method
    class WeightsOnly(Darts):   # DARTS with the architecture frozen: only the lower level trains
        name = "weights-only-test"
        arch_steps = 0

        def architecture_step(self, batch, lower) -> float:
            type(self).arch_steps += 1
            return 0.0

    try:
        config = make_config("default", sets=TINY + ["search.method=weights-only-test"])
        run = DassSearch.create(config, str(tmp_path / "run"), progress=False)
        before = run.model.alphas_normal.detach().clone()
        result = run.run()
        assert WeightsOnly.arch_steps == 3 * run.steps_per_epoch
        assert torch.equal(result.model.alphas_normal, before)   # alphas untouched
        assert result.genotype.meta["method"] == "weights-only-test"
    finally:
        METHODS.unregister("weights-only-test")
