"""The batch-interleaved program (batches of 16+) equals the per-image program and PyTorch; it is refused when
damaged; networks with ops it lacks run per image."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dass.deploy.batched import BATCHED_MIN, LANES
from dass.deploy.compiler import CompileOptions, compile_model
from dass.deploy.export import synthetic_model
from dass.deploy.packed import PackedModel
from dass.deploy.program import Field, Op
from dass.deploy.speed import calibrate_batchnorm
from dass.errors import DassError

from .test_packed_runtime import CONVS, TOL, Single, _prune, images  # noqa: F401 (the fixture)


def _batch(images: torch.Tensor, n: int) -> np.ndarray:
    reps = -(-n // images.shape[0])
    return torch.cat([images] * reps)[:n].contiguous().numpy()


def _agree(model: torch.nn.Module, x: np.ndarray, threads: int = 2) -> None:
    """The batched run equals the per-image run and PyTorch within TOL; it really ran batched."""
    program = compile_model(model.eval(), tuple(x.shape[1:]))
    assert program.batched is not None
    batched, per_image = PackedModel(program, threads=threads), PackedModel(program, threads=threads, batched=False)
    assert batched.uses_batched(len(x)) and not per_image.uses_batched(len(x))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = batched(x)
    assert out.shape == ref.shape
    assert np.abs(out - per_image(x)).max() < TOL
    assert np.abs(out - ref).max() < TOL


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolutions(name, sparsity, images):
    model = Single(*CONVS[name], act="relu" if "s2" in name else "pre")
    calibrate_batchnorm(model, images)
    _agree(_prune(model, sparsity), _batch(images, 17))


@pytest.mark.parametrize("size", [1, 3, 5, 7, 12])
def test_plane_edges(size, images):
    """Planes whose width and height are not multiples of the tiles (16 / 8 / 4 / 2 / 1 columns)."""
    model = _prune(Single(8, 12, 3, 1, 1, 1, 1, act="relu"), 0.5)
    small = images[:, :, :size, :size].contiguous()
    calibrate_batchnorm(model, small)
    _agree(model, _batch(small, 16))


@pytest.mark.parametrize("batch,threads", [(16, 1), (16, 2), (17, 2), (40, 2), (40, 3), (64, 2), (33, 4)])
def test_blocks_and_threads(batch, threads, images):
    """Blocks run alone by each thread, and blocks left over shared op by op; a last block part empty."""
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.25, calibration=images)
    _agree(model, _batch(images, batch), threads)


@pytest.mark.parametrize("batch,threads,shares", [(32, 2, True), (48, 2, True), (64, 2, True), (40, 3, False),
                                                  (64, 1, False)])
def test_rest_of_a_block_handed_to_a_thread_done_first(batch, threads, shares, images, monkeypatch):
    """Two threads: when one finishes its blocks first, the other shares the rest of its last block with it, op by
    op. A test hook delays thread 0 so that this happens on every call; outputs do not change. (One or three
    threads never hand off.)"""
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.25, calibration=images)
    program = compile_model(model.eval(), (3, 32, 32))
    x = _batch(images, batch)
    expected = PackedModel(program, threads=threads, batched=False)(x)
    packed = PackedModel(program, threads=threads)
    before = packed._lib.dass_batched_handoffs()
    monkeypatch.setenv("DASS_TEST_LAG_US", "30000")
    for _ in range(3):
        assert np.abs(packed(x) - expected).max() < TOL
    assert (packed._lib.dass_batched_handoffs() - before == 3) == shares
    assert (packed._lib.dass_batched_handoffs() == before) != shares


@pytest.mark.parametrize("name,sparsity", [("resnet18", 0.0), ("resnet18", 0.99), ("mobilenet_v2", 0.9)])
def test_whole_networks(name, sparsity, images):
    model = synthetic_model(name, sparsity, (3, 32, 32), width=0.25, calibration=images)
    _agree(model, _batch(images, 32))


def test_networks_with_other_ops_run_per_image(images):
    """Pools and concatenations (VGG, DARTS cells) have no batched program; big batches still run."""
    model = synthetic_model("vgg16", 0.9, (3, 32, 32), width=0.125, calibration=images)
    program = compile_model(model, (3, 32, 32))
    assert program.batched is None
    packed = PackedModel(program)
    assert not packed.uses_batched(32)
    with torch.no_grad():
        ref = model(torch.from_numpy(_batch(images, 32))).numpy()
    assert np.abs(packed(_batch(images, 32)) - ref).max() < TOL


def test_small_batches_run_per_image_and_option_turns_it_off(images):
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125, calibration=images)
    packed = PackedModel(compile_model(model, (3, 32, 32)))
    assert not packed.uses_batched(BATCHED_MIN - 1) and packed.uses_batched(BATCHED_MIN)
    assert compile_model(model, (3, 32, 32), options=CompileOptions(batched=False)).batched is None


def test_save_load_and_profile(tmp_path, images):
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125, calibration=images)
    packed = PackedModel(compile_model(model, (3, 32, 32)))
    x = _batch(images, 20)
    loaded = PackedModel.load(packed.save(tmp_path / "m.npz"))
    assert loaded.program.batched is not None and loaded.uses_batched(20)
    assert not PackedModel.load(tmp_path / "m.npz", batched=False).uses_batched(20)
    assert np.array_equal(loaded(x), packed(x))
    profile = loaded.profile(x, repeats=1)
    assert profile["conv 3x3"]["count"] == sum(1 for lab in packed.program.batched.labels if lab == "conv 3x3")
    assert profile["conv 3x3"]["seconds"] > 0 and profile["conv 3x3"]["macs"] > 0
    # a file written without a batched program (older dass) loads and runs per image
    plain = replace(packed.program, batched=None)
    old = PackedModel.load(PackedModel(plain).save(tmp_path / "old.npz"))
    assert old.program.batched is None and np.abs(old(x) - packed(x)).max() < TOL


@pytest.fixture(scope="module")
def program(images):
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125, calibration=images)
    return compile_model(model, (3, 32, 32))


def _tampered(program, k: int, field: str, value: int):
    ins = program.batched.instructions.copy()
    ins[k, Field[field]] = value
    return replace(program, batched=replace(program.batched, instructions=ins))


def _first(program, op: Op) -> int:
    return int(np.flatnonzero(program.batched.instructions[:, Field.OP] == op)[0])


@pytest.mark.parametrize("field,value,says", [
    ("OP", int(Op.POOL), "field OP"),
    ("X", 8, "cache line"),
    ("X", 10**9, "field X"),
    ("OUT", 2**28, "past the arena"),
    ("STRIDE", 3, "strides"),
    ("WQ", 1, "field HQ"),
    ("C", 1, "field TAPS"),
    ("HO", 40, "field TAPS"),
    ("ROWPTR", 10**8, "field ROWPTR"),
    ("AUX", 0, "field AUX"),
    ("BIAS", 10**8, "field BIAS"),
    ("ACT", 9, "field ACT"),
    ("K", 0, "field K"),
    ("DIL", 2**40, "field DIL"),
    ("PAD", -1, "field PAD"),
    ("PAD", 2, "field K"),     # (a tap past the window K, DIL and PAD name: a wavefront would not wait for it)
    ("HQ", 40, "field HQ"),
])
def test_damaged_convs_are_refused(program, field, value, says):
    with pytest.raises(DassError, match=says):
        PackedModel(_tampered(program, _first(program, Op.CONV), field, value))


def test_damaged_taps_rows_and_io_are_refused(program):
    k = _first(program, Op.CONV)
    row = program.batched.instructions[k]
    taps = program.ipool.copy()
    taps[row[Field.TAPS]] = 3   # (not a whole vector)
    with pytest.raises(DassError, match="field TAPS"):
        PackedModel(replace(program, ipool=taps))
    gap = _first(program, Op.GAP)
    with pytest.raises(DassError, match="global average pool"):
        PackedModel(_tampered(program, gap, "HO", 2))
    io = list(program.batched.io)
    io[0] = program.batched.arena_size   # the input past the arena
    with pytest.raises(DassError, match="input"):
        PackedModel(replace(program, batched=replace(program.batched, io=tuple(io))))
    io = list(program.batched.io)
    io[6] += 1   # another output shape than the program's
    with pytest.raises(DassError, match="output"):
        PackedModel(replace(program, batched=replace(program.batched, io=tuple(io))))
    with pytest.raises(DassError, match="labels"):
        PackedModel(replace(program, batched=replace(program.batched, labels=["conv"])))


def test_lanes_are_images(images):
    """A batch of 16 different images gives each its own output (lanes are not mixed up)."""
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125, calibration=images)
    packed = PackedModel(compile_model(model, (3, 32, 32)))
    x = _batch(images, LANES)
    out = packed(x)
    singles = np.concatenate([packed(x[i:i + 1]) for i in range(LANES)])
    assert np.abs(out - singles).max() < TOL
    assert np.abs(out[0] - out[1]).max() > 1e-3
