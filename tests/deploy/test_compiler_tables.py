"""The compiler's extension points and checks: lowering tables, compile options, format codes shared with C++."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from dass.deploy import native
from dass.deploy.compiler import FUNCTION_LOWERINGS, MODULE_LOWERINGS, CompileOptions, compile_model, register_lowering
from dass.deploy.export import synthetic_model
from dass.deploy.packed import PackedModel
from dass.deploy.program import Act, Field, Layout, Scratch, signature, signature_mismatch
from dass.errors import DassError

TOL = 1e-4


def halfwave(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0.0)


torch.fx.wrap("halfwave")  # a leaf for torch.fx: a call_function node of its own


class Custom(nn.Module):
    """A layer type, a wrapped function and a method the compiler does not know."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pad = nn.ZeroPad2d((1, 0, 2, 0))

    def forward(self, x):
        return halfwave(self.pad(self.conv(x))).clamp_min(0.0)


def _lower_zero_pad(low, node, m):
    left, _, top, _ = m.padding
    low.emit("shift", node, [low.arg(node.args[0])], dy=-top, dx=-left)


def _lower_halfwave(low, node):
    low.emit("act", node, [low.arg(node.args[0])], act=Act.RELU)


def test_register_lowering_for_layer_types_functions_and_methods():
    model = Custom().eval()
    with pytest.raises(DassError, match="does not support layer 'pad'.*register_lowering"):
        compile_model(model, (3, 6, 5))
    register_lowering(nn.ZeroPad2d)(_lower_zero_pad)
    register_lowering(halfwave, "clamp_min")(_lower_halfwave)
    try:
        x = torch.randn(2, 3, 6, 5)
        with torch.no_grad():
            ref = model(x).numpy()
        packed = PackedModel(compile_model(model, (3, 6, 5)))
        assert np.abs(packed(x.numpy()) - ref).max() < TOL
        assert packed.program.labels == ["conv 3x3", "shift", "act", "act"]
    finally:
        del MODULE_LOWERINGS[nn.ZeroPad2d], FUNCTION_LOWERINGS[halfwave], FUNCTION_LOWERINGS["clamp_min"]


def test_unsupported_function_names_the_registry():
    class Sigmoid(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    with pytest.raises(DassError, match="does not support call_function 'sigmoid'.*register_lowering"):
        compile_model(Sigmoid(), (3, 4, 4))


def test_each_option_switches_its_layout_off():
    """Every switch changes the program where it should, and the program still computes the model."""
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()

    def count(**options: bool) -> tuple[int, ...]:
        prog = compile_model(model, (3, 32, 32), options=CompileOptions(**options))
        assert np.abs(PackedModel(prog)(x.numpy()) - ref).max() < TOL
        i = prog.instructions
        return (int((i[:, Field.OUT_PAD] > 0).sum()), int((i[:, Field.SCRATCH] == Scratch.EARLIER_COPY).sum()),
                int((i[:, Field.SCRATCH] == Scratch.PER_THREAD).sum()), int(i[:, Field.ROWS16].sum()),
                int((i[:, Field.IM2COL] == Layout.SHIFTED).sum()))

    # (column-shifted copies take the place of padded outputs and shared copies where they apply)
    assert all(count()[2:]) and all(count(shifted_copies=False)[:4])
    for k, option in enumerate(["pad_values", "share_copies", "private_unfold", "rows16", "shifted_copies"]):
        assert count(**{option: False, "shifted_copies": False})[k] == 0, option


def test_runtime_codes_match_the_compiler():
    assert native.library().dass_signature().decode() == signature()


def test_format_codes_do_not_change():
    """Saved programs hold these values: renumbering any of them breaks every exported model."""
    assert signature() == (
        "op:CONV=1,ACT=2,ADD=3,AFFINE=4,POOL=5,GAP=6,COPY_CHANNELS=7,SHIFT=8,ZERO=9,;act:NONE=0,RELU=1,RELU6=2,;"
        "scratch:IN_PLACE=0,OWN_COPY=1,EARLIER_COPY=2,PER_THREAD=3,PER_CHANNEL=4,;layout:PADDED=0,UNFOLDED=1,SHIFTED=2,;"
        "pool:MAX=0,AVG_INSIDE=1,AVG_PADDED=2,;"
        "field:OP=0,X=1,Y=2,OUT=3,C=4,H=5,W=6,CO=7,HO=8,WO=9,K=10,STRIDE=11,PAD=12,DIL=13,GROUPS=14,ACT=15,"
        "IN_ACT=16,WEIGHT=17,BIAS=18,ROWPTR=19,TAPS=20,DENSE=21,KTAPS=22,HQ=23,WQ=24,SCRATCH=25,AUX=26,AUX2=27,"
        "X_IMG=28,Y_IMG=29,OUT_IMG=30,OUT_PAD=31,X_AT=32,Y_AT=33,OUT_AT=34,CHANNELS=35,NCHANNELS=36,PHASES=37,"
        "IM2COL=38,ROWS16=39,Y_PAD=40,;limits:IM2COL_MAX_PADDED=1024,")


class _StaleLibrary:
    def __init__(self, codes: str | None):
        if codes is not None:
            self.dass_signature = lambda: codes.encode()


@pytest.mark.parametrize("codes,message", [
    (signature().replace("RELU6=2", "RELU6=3"), "other act codes"),
    (signature().replace("Y_PAD=40,", ""), "other field codes"),
    (None, "predates"),
])
def test_a_stale_runtime_is_refused(monkeypatch, codes, message):
    monkeypatch.setattr(native, "load", lambda kernels: _StaleLibrary(codes))
    native.library.cache_clear()
    try:
        with pytest.raises(DassError, match=f"{message}.*rebuild"):
            native.library()
    finally:
        native.library.cache_clear()


def test_signature_mismatch_names_the_sections():
    assert signature_mismatch(signature()) == []
    assert signature_mismatch(signature().replace("MAX=0", "MAX=5") + ";extra:A=1,") == ["pool", "extra"]
