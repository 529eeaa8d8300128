"""Latency-aware search: a per-machine table of op times in the packed runtime, used as the cost term."""

import json

import pytest

from dass.cli import main
from dass.search import latency, make_config
from dass.search.latency import LatencyTable, edge_op_latencies, machine_key
from dass.search.searcher import DassSearch
from dass.space import get_space
from dass.space.mixed import MixedOp

TINY = ["model.init_channels=4", "model.layers=3", "model.nodes=2", "model.multiplier=2", "data.subset=128",
        "search.batch_size=32", "search.epochs.warmup=1", "search.epochs.prune=1", "search.epochs.finetune=0",
        "threads=1"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "CACHE_DIR", tmp_path / "latency")
    return tmp_path / "latency"


def _supernet():
    config = make_config("default", sets=TINY)
    return get_space("darts").build_supernet(config.model, 1, 10, MixedOp), config


def test_table_costs_and_cache(cache_dir):
    model, config = _supernet()
    table = LatencyTable(1, repeats=3)
    costs = edge_op_latencies(model, (1, 8, 8), 0.9, table)
    ops = list(config.model.ops)
    for kind in ("normal", "reduce"):
        assert costs[kind].shape == (5, len(ops))
        assert (costs[kind][:, ops.index("none")] == 0).all()
        assert (costs[kind][:, ops.index("sep_conv_3x3")] > 0).all()
    # a stride-1 skip connection is the identity: free; at stride 2 it is a factorized reduction
    normal_skip = costs["normal"][:, ops.index("skip_connect")]
    assert (normal_skip == 0).all() and (costs["reduce"][:2, ops.index("skip_connect")] > 0).all()
    assert table.measured > 0 and table.path.parent == cache_dir
    saved = json.loads(table.path.read_text())
    again = LatencyTable(1)
    assert again.entries == saved
    assert edge_op_latencies(model, (1, 8, 8), 0.9, again)["normal"].equal(costs["normal"])
    assert again.measured == 0                                       # all read from the cache
    edge_op_latencies(model, (1, 8, 8), 0.99, again)
    assert again.measured > 0                                        # another sparsity is another entry
    assert machine_key(1) != machine_key(2)                          # per thread count


def test_latency_aware_search_records_its_cost(tmp_path):
    config = make_config("default", sets=TINY + ["search.cost=latency", "search.cost_weight=0.5"])
    result = DassSearch.create(config, str(tmp_path / "run"), progress=False).run()
    assert result.genotype.meta["cost_latency_ms"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["expected_cost_latency_ms"] > 0 for r in records)


def test_profile_ops_prints_the_table(capsys):
    code = main(["profile-ops", "--threads", "1", "--set", "model.init_channels=4", "--set", "model.layers=3",
                 "--set", "model.nodes=2", "--set", "model.multiplier=2"])
    out = capsys.readouterr().out
    assert code == 0 and "| normal | 0 |" in out and "sep_conv_3x3" in out


def test_unknown_cost_is_refused():
    from dass.errors import DassError

    with pytest.raises(DassError, match="search.cost must be macs or latency"):
        make_config("default", sets=["search.cost=joules"])


def test_cache_key_follows_kernels_and_compiler(tmp_path, monkeypatch):
    """A changed runtime kernel or compiler source selects another table (either changes how fast an op runs)."""
    names = [path.name for path in latency.key_sources()]
    assert names[0].endswith(".cpp") and "compiler.py" in names
    files = [tmp_path / name for name in names]
    for path, source in zip(files, latency.key_sources()):
        path.write_bytes(source.read_bytes())
    monkeypatch.setattr(latency, "key_sources", lambda: files)
    keys = {machine_key(1)}
    for path in files[:2]:
        path.write_bytes(path.read_bytes() + b"\n")
        keys.add(machine_key(1))
    assert len(keys) == 3
