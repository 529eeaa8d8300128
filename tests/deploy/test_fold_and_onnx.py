"""Inference graphs: masks applied and batch norm folded give the masked model's outputs; ONNX matches too."""

import pytest
import torch
from torch import nn

from dass.deploy import fold_batchnorm
from dass.models import build_model
from dass.sparse import init_scores, set_sparsity


def _pruned(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, width=0.125, init_channels=4, layers=5)
    model.train()
    for _ in range(2):  # non-trivial running statistics
        model(torch.randn(8, 3, 32, 32))
    init_scores(model)
    set_sparsity(model, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16", "darts_v2"])
def test_folded_graph_equals_masked_model(name):
    model = _pruned(name)
    folded = fold_batchnorm(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    bns = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # only BNs that follow a concatenation (FactorizedReduce) cannot be folded
    assert all(n.endswith("preprocess0.bn") for n in bns), bns
    # pruned weights stay exactly zero after folding
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() > 16]
    assert all(0.3 < float((m.weight == 0).float().mean()) < 0.7 for m in convs)


@pytest.mark.parametrize("name", ["resnet18", "darts_v2"])
def test_onnx_export_matches_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from dass.deploy.onnx_export import check_onnx, export_onnx

    model = _pruned(name)
    path = export_onnx(model, (3, 32, 32), tmp_path / f"{name}.onnx")
    assert check_onnx(model, path, (3, 32, 32), batch=5) < 1e-4
