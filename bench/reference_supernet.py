"""A straightforward DARTS supernet, written from scratch as the speed reference for bench/search_speed.

Plain PyTorch, no tricks: dense nn.Conv2d layers, every candidate op (``none`` included) evaluated on
every edge and weighted by softmax(alpha), one ReLU per op, a full backward for each step. The search
step is the usual first-order DARTS step: an architecture update on a validation batch, then a weight
update (SGD, momentum 0.9, gradient clipping 5) on a training batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]


def relu_conv_bn(c_in: int, c_out: int, k: int, stride: int, pad: int, dil: int = 1, groups: int = 1) -> list:
    return [nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dil, groups=groups, bias=False)]


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride] * 0.0


class FactorizedReduce(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name: str, c: int, stride: int) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    k = int(name[-1])
    if name.startswith("sep"):
        p = k // 2
        return nn.Sequential(
            *relu_conv_bn(c, c, k, stride, p, groups=c), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False),
            *relu_conv_bn(c, c, k, 1, p, groups=c), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))
    return nn.Sequential(*relu_conv_bn(c, c, k, stride, k - 1, dil=2, groups=c), nn.Conv2d(c, c, 1, bias=False),
                         nn.BatchNorm2d(c, affine=False))


class MixedOp(nn.Module):
    def __init__(self, c: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, c, stride) for name in PRIMITIVES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class Cell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, nodes: int = 4):
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else \
            nn.Sequential(nn.ReLU(), nn.Conv2d(c_pp, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))
        self.pre1 = nn.Sequential(nn.ReLU(), nn.Conv2d(c_p, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))
        self.edges = nn.ModuleList(MixedOp(c, 2 if reduction and j < 2 else 1)
                                   for i in range(nodes) for j in range(2 + i))

    def forward(self, s0, s1, weights):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.nodes):
            s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-4:], dim=1)


class ReferenceSupernet(nn.Module):
    def __init__(self, c: int = 8, layers: int = 5, num_classes: int = 10):
        super().__init__()
        c_curr = 3 * c
        self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, c
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(Cell(c_pp, c_p, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c_curr
        self.classifier = nn.Linear(c_p, num_classes)
        k = sum(2 + i for i in range(4))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))

    def forward(self, x):
        wn, wr = F.softmax(self.alphas_normal, -1), F.softmax(self.alphas_reduce, -1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, wr if cell.reduction else wn)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


class ReferenceSearch:
    """First-order DARTS: Adam on alphas (lr 3e-4, betas (0.5, 0.999), wd 1e-3), SGD on the weights."""

    def __init__(self, model: ReferenceSupernet, lr: float = 0.025):
        self.model = model
        alphas = [model.alphas_normal, model.alphas_reduce]
        self.weights = [p for n, p in model.named_parameters() if not n.startswith("alphas")]
        self.arch_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        self.weight_opt = torch.optim.SGD(self.weights, lr=lr, momentum=0.9, weight_decay=3e-4)

    def step(self, x_train, y_train, x_val, y_val) -> None:
        self.arch_opt.zero_grad()
        self.weight_opt.zero_grad()
        F.cross_entropy(self.model(x_val), y_val).backward()
        self.arch_opt.step()
        self.arch_opt.zero_grad()
        self.weight_opt.zero_grad()
        F.cross_entropy(self.model(x_train), y_train).backward()
        nn.utils.clip_grad_norm_(self.weights, 5.0)
        self.weight_opt.step()
