"""DARTS-PT: perturbation-based selection after the (DASS) supernet training, and its fixed-alpha variant.

The defining property: an edge keeps the op whose removal hurts the validation accuracy most, so making another
op's removal hurt more flips the choice. Then the mechanics (removing an op zeroes exactly its contribution, a
decision makes the edge one-hot, the topology step keeps two inputs), fixed alphas, the CLI in both spaces, and
a SIGKILL during the selection resuming to the same result as an uninterrupted run."""

import json
import signal

import pytest
import torch

from dass.errors import DassError
from dass.search import make_config
from dass.search.methods import DartsPT, DartsPTFixedAlpha, EpochEnd, MethodPhase, get_method
from dass.search.methods import darts_pt
from dass.search.methods.darts_pt import SELECT_PHASE, Projection, ProjectedMixedOp
from dass.search.searcher import DassSearch
from dass.space import NB201Genotype, PRIMITIVES, partial_channel_variant
from dass.space.mixed import channel_shuffle

from tests_helpers import run_cli  # registered by conftest.py

NB201_SETS = ["model.space=nb201", "model.ops=[none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]",
              "model.layers=1"]
DARTS_SETS = ["model.nodes=2", "model.multiplier=2", "model.layers=3"]
TINY_SETS = ["search.epochs.warmup=1", "search.epochs.prune=1", "search.epochs.finetune=1", "data.subset=128",
             "model.init_channels=4", "search.batch_size=32", "threads=1"]
# the CLI twin: 2 steps per epoch (64 train / 64 val images, batch 32)
TINY = ["--dataset", "digits", "--subset", "128", "--init-channels", "4", "--batch-size", "32", "--threads", "1",
        "--quiet", "--set", "search.epochs.warmup=1", "--set", "search.epochs.prune=1",
        "--set", "search.epochs.finetune=1"]
CLI_SPACE = {"darts": ["--layers", "3", "--set", "model.nodes=2", "--set", "model.multiplier=2",
                       "--set", "model.ops=[none,max_pool_3x3,skip_connect,sep_conv_3x3]"],
             "nb201": ["--space", "nb201", "--layers", "1", "--set", "model.nodes=4",
                       "--set", "model.ops=[none,skip_connect,nor_conv_1x1,nor_conv_3x3,avg_pool_3x3]"]}


def build(tmp_path, method="darts-pt", space="darts", extra=()):
    sets = TINY_SETS + (NB201_SETS if space == "nb201" else DARTS_SETS) + [f"search.method={method}", *extra]
    return DassSearch.create(make_config("default", sets=sets), str(tmp_path / "run"), progress=False)


def fake_accuracy(method, importance):
    """A stand-in for the validation test: removing op k (or input j) of the edge (node) under test leaves
    accuracy ``1 - importance[k]``; the loss is constant, so only the accuracies decide."""
    def measure(model, batches, device=None):
        kind, edge, op = method.projection.removed
        return 1.0 - importance(kind, edge, op), 1.0
    return measure


def end_of_select_epoch(run, epoch):
    return EpochEnd(SELECT_PHASE, epoch, run.config.seed, lambda: run.data.evaluation.batches(0), run.device)


# -- the defining property -------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_the_edge_keeps_the_op_whose_removal_hurts_most_and_the_choice_follows_it(tmp_path, monkeypatch, space):
    ops = list(build(tmp_path / "probe", space=space).config.model.ops)
    x, y = ops.index("skip_connect"), ops.index("avg_pool_3x3")
    choices = []
    for favourite in (x, y):    # removing op `favourite` drops the accuracy most ... then another op is
        run = build(tmp_path / str(favourite), space=space)
        method = run.method
        importance = lambda kind, edge, op, f=favourite: 0.9 if op == f else 0.1 * op / len(ops)
        monkeypatch.setattr(darts_pt, "removal_accuracy", fake_accuracy(method, importance))
        record = method.end_epoch(end_of_select_epoch(run, 0))["selection"]
        assert record["decision"] == 1 and record["step"] == "op"
        assert len(record["edges"]) == len(method.kinds)
        for entry in record["edges"]:
            assert entry["chosen"] == ops[favourite]
            assert entry["removed"][ops[favourite]]["val_acc"] == pytest.approx(0.1)
            edge = method.order[entry["cell"]][0]
            assert entry["edge"] == edge and method.projection.ops[(entry["cell"], edge)] == favourite
        choices.append([e["chosen"] for e in record["edges"]])
    assert choices[0] != choices[1]   # ... and the decision flips with it


def test_ties_go_to_the_higher_loss_then_the_first_op(tmp_path, monkeypatch):
    run = build(tmp_path, space="nb201")
    method = run.method
    monkeypatch.setattr(darts_pt, "removal_accuracy",
                        lambda *a, **k: (0.5, 2.0 if method.projection.removed[2] == 3 else 1.0))
    assert method.end_epoch(end_of_select_epoch(run, 0))["selection"]["edges"][0]["chosen"] == "nor_conv_3x3"
    monkeypatch.setattr(darts_pt, "removal_accuracy", lambda *a, **k: (0.5, 1.0))
    assert method.end_epoch(end_of_select_epoch(run, 1))["selection"]["edges"][0]["chosen"] == "none"


def test_the_topology_step_keeps_the_two_inputs_whose_removal_hurts_most(tmp_path, monkeypatch):
    run = build(tmp_path, space="darts")
    method = run.method
    assert method.node_inputs == {1: [2, 3, 4]} and method.num_decisions == 5 + 1
    # node 1's inputs are edges 2, 3, 4 (input 0, 1 and node 0); removing input 2, then input 0 hurts most
    hurt = {2: 0.2, 3: 0.1, 4: 0.5}
    monkeypatch.setattr(darts_pt, "removal_accuracy",
                        fake_accuracy(method, lambda kind, edge, op: hurt[edge] if op is None else 0.1 * op))
    for epoch in range(method.num_decisions):
        record = method.end_epoch(end_of_select_epoch(run, epoch))["selection"]
    assert record["step"] == "topology" and method.complete
    assert [n["kept"] for n in record["nodes"]] == [[0, 2], [0, 2]]
    assert method.projection.dropped == {("normal", 3), ("reduce", 3)}
    genotype = method.select()
    assert [j for _, j in genotype.normal[2:]] == [0, 2] and [j for _, j in genotype.reduce[2:]] == [0, 2]
    # every op decision kept the highest-index candidate (its removal hurt most): dil_conv_5x5
    assert {op for op, _ in genotype.normal + genotype.reduce} == {PRIMITIVES[-1]}


# -- the mechanics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("partial", [1, 2])
def test_removing_an_op_zeroes_exactly_its_contribution(partial):
    torch.manual_seed(0)
    edge = partial_channel_variant(ProjectedMixedOp, partial)(8, 1, list(PRIMITIVES)).eval()
    projection = Projection()
    edge.projection, edge.key = projection, ("normal", 3)
    x, weights = torch.randn(2, 8, 6, 6), torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    c = 8 // partial
    outs = [op(x[:, :c]) for op in edge.ops]

    def expected(ws):
        mixed = sum(ws[k] * outs[k] for k in range(len(PRIMITIVES)))
        if partial == 1:
            return mixed
        return channel_shuffle(torch.cat([mixed, x[:, c:]], 1), partial)   # PC-DARTS: the rest bypasses the ops

    with torch.no_grad():
        torch.testing.assert_close(edge(x, weights), expected(weights))
        k = PRIMITIVES.index("sep_conv_3x3")
        with projection.removing("normal", 3, k):
            w = weights.clone()
            w[k] = 0
            torch.testing.assert_close(edge(x, weights), expected(w))
        with projection.removing("reduce", 3, k), projection.lifted():   # another edge's test; lifted: plain mix
            torch.testing.assert_close(edge(x, weights), expected(weights))
        with projection.removing("normal", 3):
            assert torch.equal(edge(x, weights), torch.zeros(2, 8, 6, 6))   # the whole edge, bypass included
        projection.ops[("normal", 3)] = k
        torch.testing.assert_close(edge(x, weights), expected(torch.eye(len(PRIMITIVES))[k]))


def test_a_decision_makes_the_edge_one_hot(tmp_path, monkeypatch):
    run = build(tmp_path, space="darts")
    model, method = run.model.eval(), run.method
    edge, k = 1, PRIMITIVES.index("max_pool_3x3")
    monkeypatch.setattr(method, "order", {"normal": [edge], "reduce": [edge]})
    method.decide(lambda: (1.0 - float(method.projection.removed[2] == k), 1.0))
    assert method.projection.ops == {("normal", edge): k, ("reduce", edge): k}
    x = run.data.evaluation.x[:8]
    ran = []
    hooks = [op.register_forward_hook(lambda m, i, o, j=j: ran.append(j))
             for cell in model.cells for j, op in enumerate(cell.edges[edge].ops)]
    with torch.no_grad():
        projected = model(x)
    assert set(ran) == {k}   # a decided edge runs its op alone ...
    for h in hooks:
        h.remove()
    with torch.no_grad():    # ... with weight exactly 1: the plain supernet with that edge's softmax one-hot
        saved = [a.detach().clone() for a in (model.alphas_normal, model.alphas_reduce)]
        for a in (model.alphas_normal, model.alphas_reduce):
            a[edge] = -1e9
            a[edge, k] = 0.0
        with method.measuring():
            plain = model(x)
        for a, s in zip((model.alphas_normal, model.alphas_reduce), saved):
            a.copy_(s)
    torch.testing.assert_close(projected, plain, rtol=1e-6, atol=1e-6)
    # no gradient reaches the decided edge's alphas; the others still learn
    loss = torch.nn.functional.cross_entropy(model(x), run.data.evaluation.y[:8])
    g = torch.autograd.grad(loss, model.alphas_normal)[0]
    assert float(g[edge].abs().max()) == 0.0 and float(g.abs().sum()) > 0
    # the genotype shows the decision whatever the alphas say
    with torch.no_grad():
        model.alphas_normal[edge] = 0.0
        model.alphas_normal[edge, PRIMITIVES.index("sep_conv_5x5")] = 10.0
    assert ("max_pool_3x3", 1) in method.derive().normal[:2]


def test_options_are_checked_and_the_plan_adds_the_selection_phase(tmp_path):
    with pytest.raises(DassError, match="tune_epochs must be a whole number >= 1"):
        make_config("default", sets=["search.method=darts-pt", "search.darts_pt.tune_epochs=0"])
    with pytest.raises(DassError, match="eval_batches"):
        make_config("default", sets=["search.method=darts-pt", "search.darts_pt.eval_batches=-1"])
    with pytest.raises(DassError, match="never trains"):
        make_config("default", sets=["search.method=darts-pt-fixed-alpha", "search.cost_weight=0.1"])
    assert get_method("darts-pt") is DartsPT and get_method("darts-pt-fixed-alpha") is DartsPTFixedAlpha
    run = build(tmp_path, space="nb201", extra=["search.darts_pt.tune_epochs=2"])
    assert [p.name for p in run.plan] == ["warmup", "prune", "finetune", SELECT_PHASE]
    select = run.plan[-1]
    assert isinstance(select, MethodPhase) and select.epochs == 6 * 2 and select.weight_lr_scale == 0.1
    plain = DassSearch.create(make_config("default", sets=TINY_SETS + NB201_SETS), str(tmp_path / "plain"),
                              progress=False)
    assert [p.name for p in plain.plan] == ["warmup", "prune", "finetune"]   # other methods: as they were


def test_the_supernet_trains_as_darts_does_before_the_selection(tmp_path):
    records = {}
    for method in ("darts", "darts-pt"):
        run = build(tmp_path / method, method=method, space="nb201")
        run.run()
        records[method] = [{k: v for k, v in r.items() if k != "seconds_per_step"} for r in run.run_dir.log_records()]
    assert records["darts-pt"][:3] == records["darts"]
    assert [r["phase"] for r in records["darts-pt"][3:]] == [SELECT_PHASE] * 6


def test_fixed_alpha_never_changes_the_alphas(tmp_path):
    run = build(tmp_path, method="darts-pt-fixed-alpha", space="darts")
    result = run.run()
    for alpha in result.model.arch_parameters():
        assert torch.equal(alpha, torch.zeros_like(alpha))
    assert not run.arch_optimizer.state   # never stepped
    records = run.run_dir.log_records()
    n = len(PRIMITIVES)
    assert all(p == pytest.approx(1 / n) for r in records for cell in r["alphas"].values() for row in cell for p in row)
    selects = [r for r in records if r["phase"] == SELECT_PHASE]
    assert len(selects) == 6 and all("selection" in r for r in selects)
    assert selects[0]["lr"]["weights"] == pytest.approx(run.config.search.weight_lr / 10)


# -- end to end, from the command line -----------------------------------------------------------------
def decisions_of(run_dir):
    records = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    return records, [r["selection"] for r in records if "selection" in r]


@pytest.mark.parametrize("method, space, order", [("darts-pt", "nb201", "2"), ("darts-pt-fixed-alpha", "darts", "1"),
                                                  ("darts-pt-fixed-alpha", "nb201", "1")])
def test_search_runs_from_the_cli_and_the_genotype_is_the_decisions(tmp_path, method, space, order):
    out = tmp_path / "run"
    done = run_cli("search", *TINY, *CLI_SPACE[space], "--method", method, "--order", order, "--out", str(out))
    assert done.returncode == 0, done.stderr
    records, decisions = decisions_of(out)
    assert [r["phase"] for r in records] == ["warmup", "prune", "finetune"] + [SELECT_PHASE] * 6
    assert [d["decision"] for d in decisions] == list(range(1, 7))
    saved = json.loads((out / "genotype.json").read_text())
    assert saved["meta"]["method"] == method and saved["meta"]["space"] == space
    if space == "nb201":
        chosen = {e["edge"]: e["chosen"] for d in decisions for e in d["edges"]}
        assert NB201Genotype.from_dict(saved).ops == tuple(chosen[k] for k in range(6))
    else:
        assert_darts_genotype_from_decisions(saved, decisions)
    assert records[-1]["genotype"] == {k: v for k, v in saved.items() if k != "meta"}


def assert_darts_genotype_from_decisions(saved, decisions):
    ops = {(e["cell"], e["edge"]): e["chosen"] for d in decisions if d["step"] == "op" for e in d["edges"]}
    kept = {n["cell"]: n["kept"] for d in decisions if d["step"] == "topology" for n in d["nodes"]}
    for cell in ("normal", "reduce"):   # 2 nodes: node 0 keeps edges 0, 1; node 1 its kept inputs of edges 2-4
        expected = [[ops[(cell, 0)], 0], [ops[(cell, 1)], 1]] + [[ops[(cell, 2 + j)], j] for j in kept[cell]]
        assert saved[cell] == expected


def test_sigkill_during_selection_then_resume_equals_uninterrupted(tmp_path):
    # 3 training epochs (6 steps), then 6 selection epochs of 2 steps; a checkpoint after every step; killed
    # after step 12, the first of selection epoch 3: resumed from the mid-epoch checkpoint, with 2 decisions made
    extra = [*CLI_SPACE["darts"], "--method", "darts-pt", "--set", "checkpoint_minutes=0"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    done = run_cli("search", *TINY, *extra, "--out", str(ref))
    assert done.returncode == 0, done.stderr
    killed = run_cli("search", *TINY, *extra, "--out", str(cut), env={"_DASS_TEST_KILL_AFTER_STEPS": "12"})
    assert killed.returncode == -signal.SIGKILL
    assert not (cut / "genotype.json").exists()
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"phase": 3, "epoch": 2, "step": 1} and state["method"]["decisions"] == 2
    resumed = run_cli("search", "--resume", str(cut), "--quiet")
    assert resumed.returncode == 0, resumed.stderr

    s_ref, s_cut = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (ref, cut))
    assert s_ref["method"] == s_cut["method"] and s_ref["method"]["decisions"] == 6
    for key, value in s_ref["model"].items():
        assert torch.equal(value, s_cut["model"][key]), key
    (log_ref, dec_ref), (log_cut, _) = decisions_of(ref), decisions_of(cut)
    for r in log_ref + log_cut:
        r.pop("seconds_per_step")
    assert log_ref == log_cut
    g_ref = json.loads((ref / "genotype.json").read_text())
    assert g_ref == json.loads((cut / "genotype.json").read_text())
    assert_darts_genotype_from_decisions(g_ref, dec_ref)
