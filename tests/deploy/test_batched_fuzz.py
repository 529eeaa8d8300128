"""Damaged batched programs (:mod:`dass.deploy.batched`) are refused or run without touching memory outside the
runtime's buffers: the fuzz test of ``test_packed_validation`` on the batched instruction table and its meta,
run at batch sizes that take the batched program (blocks run alone and blocks shared op by op)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dass.deploy.compiler import compile_model
from dass.deploy.packed import PackedModel
from dass.deploy.program import Op
from dass.deploy.speed import calibrate_batchnorm
from dass.sparse import SparseConv2d, SparseLinear, init_scores, set_sparsity

from . import test_packed_validation as base

SHAPE = (3, 10, 10)
CASES = 1200
SEED = 20261202


class Batchable(nn.Module):
    """Every op of the batched program: convs (dilated and grouped, strided, depthwise, pointwise, dense), a fused
    and a standalone residual, a standalone activation, global pooling and a linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dil = SparseConv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.down = SparseConv2d(8, 16, 3, stride=2, padding=1)
        self.short = SparseConv2d(8, 16, 1, stride=2)
        self.dw = SparseConv2d(16, 16, 3, padding=1, groups=16)
        self.pw = SparseConv2d(16, 16, 1)
        self.fc = SparseLinear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.dil(x)) + x)
        y = self.down(x) + self.short(x)
        z = F.relu6(y)
        z = self.pw(self.dw(z)) + y + z
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    m = Batchable()
    init_scores(m)
    set_sparsity(m, 0.7)
    calibrate_batchnorm(m, torch.randn(64, *SHAPE))
    program = compile_model(m.eval(), SHAPE)
    assert program.batched is not None
    assert {Op.CONV, Op.ADD, Op.ACT, Op.GAP} <= set(int(v) for v in program.batched.instructions[:, 0])
    return PackedModel(program).save(tmp_path_factory.mktemp("batched") / "model_packed.npz")


class BatchedMutator(base.Mutator):
    """The base mutator's damage aimed at the batched table (held under "instructions" while mutating) and at
    the batched program's meta."""

    def meta(self, arrays) -> str:
        if self.rng.random() < 0.3:
            return super().meta(arrays)
        meta = json.loads(json.dumps(self.base_meta))
        b = meta["batched"]
        key = self.rng.choice(["arena_size", "io", "labels", "macs", "drop", "garbage"])
        expect = "same"
        if key == "arena_size":
            b[key] = self.rng.choice([0, -1, b[key] - 16, b[key] // 2, b[key] + 16, 2**40]).item()
            expect = "any"
        elif key == "io":
            j = int(self.rng.integers(10))
            b["io"][j] = self.rng.choice([-1, b["io"][j] + 1, b["io"][j] + 16, 2**40, 0]).item()
            expect = "any"
        elif key in ("labels", "macs"):
            b[key] = b[key][:-1]
        elif key == "drop":
            del b[self.rng.choice(sorted(b))]
        else:
            meta["batched"] = [1, "x", None][int(self.rng.integers(3))]
        arrays.update(base._with_meta(arrays, meta))
        return expect


def _swap(arrays: dict) -> dict:
    out = dict(arrays)
    if "batched" in out and "instructions" in out:
        out["instructions"], out["batched"] = arrays["batched"], arrays["instructions"]
    return out


def test_fuzzed_batched_programs_are_refused_or_run_safely(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "FREE_FIELDS", {})   # (every field a batched op reads is checked)
    monkeypatch.setattr(base, "NEGATIVE_VALID", {Op.CONV: {"Y", "BIAS"}})
    original = base._arrays(saved)
    mutator = BatchedMutator(_swap(original), SEED)
    rng = np.random.default_rng(SEED + 1)
    base._write(tmp_path / "original.npz", original)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((48, *SHAPE)).astype(np.float32))
    cases = []
    for i in range(CASES):
        arrays, kind, expect = mutator.case()
        base._write_case(tmp_path / f"{i}.npz", _swap(arrays), rng)
        cases.append((kind, expect))
    worker = base.WORKER.replace("RUNS = ((1, 2), (2, 1))", "RUNS = ((16, 2), (48, 2), (17, 1))")
    assert worker != base.WORKER
    outcomes = base._run_worker(tmp_path, CASES, worker)
    problems = [f"case {i} ({kind}, expect {expect}): {outcomes[i]}" for i, (kind, expect) in enumerate(cases)
                if not (outcomes[i] in ("refused", "same") or (outcomes[i] == "diff" and expect == "any"))]
    counts = {s: sum(1 for o in outcomes.values() if o.split()[0] == s) for s in ("refused", "same", "diff")}
    print(f"batched fuzz: {CASES} cases, {counts}")
    assert not problems, "\n".join(problems[:30])
    assert counts["refused"] > CASES // 4 and counts["same"] > 10 and counts["diff"] > 10


def test_fuzz_worker_catches_batched_accesses_outside_the_buffers(saved, tmp_path):
    """The harness reaches the batched runtime: without the batched validator, an output placed past the arena
    crashes the worker at a guard page."""
    original = base._arrays(saved)
    base._write(tmp_path / "original.npz", original)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((48, *SHAPE)).astype(np.float32))
    damaged = dict(original)
    damaged["batched"] = original["batched"].copy()
    meta = base._meta(original)
    damaged["batched"][-1, base.Field.OUT] = meta["batched"]["arena_size"] - 16   # (its 10 vectors cross the end)
    base._write(tmp_path / "0.npz", damaged)
    base._write(tmp_path / "1.npz", original)
    worker = base.WORKER.replace("RUNS = ((1, 2), (2, 1))", "RUNS = ((16, 2), (48, 2), (17, 1))")
    unchecked = "import dass.deploy.packed as _p\n_p.validate_batched = lambda program: None\n" + worker
    outcomes = base._run_worker(tmp_path, 2, unchecked)
    assert outcomes[0].startswith("crash") and outcomes[1] == "same", outcomes
