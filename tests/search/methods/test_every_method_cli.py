"""Every search method runs end to end from the command line in both spaces, and its cell is of that space."""

import json

import pytest

from dass.cli import main
from dass.search.methods import available_methods
from dass.space import load_genotype

TINY = ["--dataset", "digits", "--subset", "96", "--init-channels", "4", "--batch-size", "32", "--threads", "1",
        "--quiet", "--order", "1", "--set", "search.epochs.warmup=1", "--set", "search.epochs.prune=1",
        "--set", "search.epochs.finetune=1"]
SPACES = {"darts": ["--layers", "2", "--set", "model.nodes=2", "--set", "model.multiplier=2",
                    "--set", "model.ops=[none,max_pool_3x3,skip_connect,sep_conv_3x3]"],
          "nb201": ["--space", "nb201", "--layers", "1"]}


def test_the_list_is_every_registered_method():
    assert set(available_methods()) >= {"darts", "darts-pt", "darts-pt-fixed-alpha", "rarts", "sd-darts",
                                        "sharp-darts", "proxyless"}


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("method", available_methods())
def test_every_method_searches_each_space_from_the_cli(tmp_path, capsys, method, space):
    out = tmp_path / "run"
    assert main(["search", *TINY, *SPACES[space], "--method", method, "--out", str(out)]) == 0
    genotype = load_genotype(str(out / "genotype.json"))
    assert json.loads((out / "genotype.json").read_text()).get("space", "darts") == space
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"warmup", "prune", "finetune"} <= {r["phase"] for r in records}
    if space == "nb201":
        capsys.readouterr()
        assert main(["show", str(out / "genotype.json"), "--format", "nb201"]) == 0
        assert str(genotype) in capsys.readouterr().out.splitlines()   # the architecture string, on its own line
