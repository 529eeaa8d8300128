"""Parameter and multiply-add counts against counts made by hand."""

import torch
from torch import nn

from dass.metrics import count
from dass.sparse import SparseConv2d, SparseLinear, set_sparsity
from dass.sparse.layers import kept_count


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SparseConv2d(3, 8, 3, padding=1, bias=False)          # 8x8 out
        self.bn = nn.BatchNorm2d(8)
        self.dw = SparseConv2d(8, 8, 3, stride=2, padding=1, groups=8)    # 4x4 out, with bias
        self.fc = SparseLinear(8, 5)

    def forward(self, x):
        x = self.dw(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def test_counts_by_hand():
    model = Small()
    dense = count(model, (3, 8, 8))
    params = 8 * 3 * 9 + 2 * 8 + (8 * 9 + 8) + (8 * 5 + 5)
    assert dense.params == dense.nonzero_params == params
    macs = 8 * 8 * (8 * 3 * 9) + 4 * 4 * (8 * 9) + 8 * 5
    assert dense.macs == dense.sparse_macs == macs

    torch.manual_seed(0)
    for m in (model.conv, model.dw, model.fc):
        m.scores.data.normal_()
    set_sparsity(model, 0.75)
    sparse = count(model, (3, 8, 8))
    k_conv, k_dw, k_fc = kept_count(216, 0.25), kept_count(72, 0.25), kept_count(40, 0.25)
    assert sparse.params == params
    assert sparse.nonzero_params == k_conv + k_dw + k_fc + 2 * 8 + 8 + 5  # biases and BN are kept whole
    assert sparse.sparse_macs == 64 * k_conv + 16 * k_dw + k_fc
    assert sparse.macs == macs
