"""The packed sparse runtime equals the masked PyTorch model: per op, for whole networks, after save/load."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dass.data import load_dataset
from dass.deploy.compiler import CompileOptions, compile_model
from dass.deploy.export import synthetic_model
from dass.deploy.packed import PackedModel
from dass.deploy.program import Field, Layout, Op, Scratch
from dass.deploy.speed import calibrate_batchnorm, compare_speed
from dass.errors import DassError
from dass.models import build_model
from dass.sparse import SparseConv2d, SparseLinear, init_scores, set_sparsity
from dass.space import DARTS_V1

TOL = 1e-4


@pytest.fixture(scope="module")
def images(cifar_subset) -> torch.Tensor:
    """Real CIFAR-10 test images, per-channel standardized."""
    x = torch.from_numpy(load_dataset(str(cifar_subset)).x_test[:32]).float().permute(0, 3, 1, 2) / 255.0
    return ((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)).contiguous()


def _check(model: nn.Module, x: torch.Tensor, threads: int = 2) -> float:
    model.eval()
    packed = PackedModel(compile_model(model, tuple(x.shape[1:])), threads=threads)
    with torch.no_grad():
        ref = model(x).numpy()
    out = packed(x.numpy())
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max())


def _prune(model: nn.Module, sparsity: float) -> nn.Module:
    torch.manual_seed(1)
    init_scores(model)
    if sparsity > 0:
        set_sparsity(model, sparsity)
    return model


class Single(nn.Module):
    """One conv (+BN, + activation) on a 3-channel image, with a channel-expanding stem for depthwise tests."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, dil: int, groups: int, act: str):
        super().__init__()
        # with c_in == 3 the conv reads the image: a ReLU before it cannot fuse into a producer and
        # goes into the conv's padded input copy instead
        self.stem = SparseConv2d(3, c_in, 1, bias=True) if c_in != 3 else nn.Identity()
        self.conv = SparseConv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = act

    def forward(self, x):
        x = self.stem(x)
        if self.act == "pre":    # ReLU -> conv (DARTS order): fused into the padded copy
            return self.bn(self.conv(F.relu(x)))
        y = self.bn(self.conv(x))
        return {"relu": F.relu, "relu6": F.relu6, "none": lambda t: t}[self.act](y)


CONVS = {  # c_in, c_out, k, stride, pad, dil, groups
    "conv3x3": (8, 12, 3, 1, 1, 1, 1),
    "conv3x3_s2": (8, 12, 3, 2, 1, 1, 1),
    "pointwise": (8, 16, 1, 1, 0, 1, 1),
    "pointwise_s2": (8, 16, 1, 2, 0, 1, 1),
    "depthwise3x3": (8, 8, 3, 1, 1, 1, 8),
    "depthwise5x5_s2": (8, 8, 5, 2, 2, 1, 8),
    "dilated3x3": (8, 8, 3, 1, 2, 2, 8),
    "dilated5x5_s2": (8, 8, 5, 2, 4, 2, 8),
    "grouped": (8, 12, 3, 1, 1, 1, 4),
    "conv7x7_nopad": (8, 6, 7, 1, 0, 1, 1),
    "conv3x3_wide": (16, 48, 3, 1, 1, 1, 1),      # (enough output channels for column-shifted copies at 90%)
    "conv5x5": (16, 32, 5, 1, 2, 1, 1),
    "dilated3x3_dense": (16, 24, 3, 1, 2, 2, 1),
}


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolutions(name, sparsity, images):
    model = Single(*CONVS[name], act="relu" if "s2" in name else "pre")
    calibrate_batchnorm(model, images)
    assert _check(_prune(model, sparsity), images[:3]) < TOL


@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolutions_on_small_planes(name, images):
    """Output planes of 16 pixels or fewer take the unfolded-input path."""
    model = Single(*CONVS[name], act="relu" if "s2" in name else "pre")
    size = 8 if "7x7" in name else 4   # a 7x7 kernel without padding needs more than 4 pixels
    small = images[:, :, :size, :size].contiguous()
    calibrate_batchnorm(model, small)
    assert _check(_prune(model, 0.8), small[:3]) < TOL


@pytest.mark.parametrize("act", ["none", "relu", "relu6", "pre"])
def test_activations(act, images):
    model = _prune(Single(3, 8, 3, 1, 1, 1, 1, act), 0.5)
    calibrate_batchnorm(model, images)
    assert _check(model, images[:2]) < TOL


class Mixed(nn.Module):
    """Pools, a crop and a pad, an unfolded BN after a concat, additions, global pooling and a linear layer."""

    def __init__(self):
        super().__init__()
        self.a = SparseConv2d(3, 6, 3, padding=1)
        self.b = SparseConv2d(3, 6, 1, stride=2)
        self.c = SparseConv2d(3, 6, 1, stride=2)
        self.bn = nn.BatchNorm2d(12)
        self.max = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.avg_pad = nn.AvgPool2d(3, stride=1, padding=1)
        self.fc = SparseLinear(24, 7)

    def forward(self, x):
        h = F.relu(self.a(x))
        cat = self.bn(torch.cat([self.b(x), self.c(x[:, :, 1:, 1:])], dim=1))    # FactorizedReduce's pattern
        pooled = self.max(torch.cat([h, h], dim=1))                              # (12, 16, 16)
        y = self.avg(cat) + self.avg_pad(pooled)
        y = F.pad(y, (0, 1, 0, 1))
        z = torch.cat([y, F.relu6(y)], dim=1)
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


class Pool(nn.Module):
    def __init__(self, pool: nn.Module):
        super().__init__()
        self.stem = SparseConv2d(3, 5, 1, bias=True)
        self.pool = pool

    def forward(self, x):
        return F.relu(self.pool(self.stem(x)))   # the ReLU fuses into the pool's store


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 3, 0), (5, 1, 2), (5, 2, 2), (3, 2, 0)])
@pytest.mark.parametrize("kind", ["max", "avg", "avg_exclude_pad"])
def test_pools(kind, k, s, p, images):
    pool = nn.MaxPool2d(k, s, p) if kind == "max" else nn.AvgPool2d(k, s, p, count_include_pad=kind == "avg")
    x = F.interpolate(images[:2], size=(11, 13))   # odd, non-square: windows cut by every border
    assert _check(Pool(pool), x) < TOL


def test_pools_concat_crop_pad_linear(images):
    model = _prune(Mixed(), 0.5)
    calibrate_batchnorm(model, images)
    assert _check(model, images[:4]) < TOL


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16", "darts_v2", "genotype"])
def test_whole_networks(name, images):
    kwargs = dict(init_channels=6, layers=5, genotype=DARTS_V1) if name in ("darts_v2", "genotype") else \
        dict(width=0.25)
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    init_scores(model)
    set_sparsity(model, 0.9)
    calibrate_batchnorm(model, images)
    for threads in (1, 2):
        assert _check(model, images[:5], threads) < TOL


def test_batch_sizes_and_save_load(tmp_path, images):
    model = synthetic_model("resnet18", 0.95, (3, 32, 32), width=0.25)
    packed = PackedModel(compile_model(model, (3, 32, 32)))
    path = packed.save(tmp_path / "m.npz")
    loaded = PackedModel.load(path)
    with torch.no_grad():
        ref = model(images[:7]).numpy()
    for n in (1, 7):
        assert np.abs(loaded(images[:n].numpy()) - ref[:n]).max() < TOL
    np.testing.assert_array_equal(loaded(images[:7].numpy()), packed(images[:7].numpy()))


def test_sparse_and_dense_layouts_agree(images):
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125)
    x = images[:2].numpy()
    sparse = PackedModel(compile_model(model, (3, 32, 32), options=CompileOptions(dense_threshold=1.1, batched=False)))
    dense = PackedModel(compile_model(model, (3, 32, 32), options=CompileOptions(dense_threshold=0.0, batched=False)))
    assert np.abs(sparse(x) - dense(x)).max() < TOL
    # the dense layout stores every weight, the sparse one only the nonzeros
    assert dense.program.fpool.size > 5 * sparse.program.fpool.size


def test_nonzero_macs_are_counted(images):
    model = synthetic_model("vgg16", 0.9, (3, 32, 32), width=0.125)
    from dass.metrics import count

    packed = PackedModel(compile_model(model, (3, 32, 32)))
    assert packed.nonzero_macs == count(model, (3, 32, 32)).sparse_macs


def test_bad_inputs_are_refused(tmp_path):
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125)
    packed = PackedModel(compile_model(model, (3, 32, 32)))
    with pytest.raises(DassError, match="compiled for"):
        packed(np.zeros((1, 3, 16, 16), np.float32))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DassError, match="not a dass packed model"):
        PackedModel.load(bad)
    with pytest.raises(DassError, match="dass export"):
        PackedModel.load(tmp_path / "missing.npz")
    with pytest.raises(DassError, match="does not support layer"):
        compile_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()), (3, 8, 8))


def test_speed_report_measures_both(images):
    model = synthetic_model("resnet18", 0.99, (3, 32, 32), width=0.25)
    report = compare_speed(model, (3, 32, 32), batches=(1, 3), rounds=2, inputs=images)
    assert [r.batch for r in report.results] == [1, 3]
    assert all(r.dense_ms > 0 and r.packed_ms > 0 and r.max_abs_diff < TOL for r in report.results)
    assert all(r.dense_cold_ms > 0 and r.packed_cold_ms > 0 for r in report.results)   # timed apart
    # ONNX Runtime (a test dependency) on the same folded model, timed beside the two
    assert all(r.ort_ms > 0 and r.ort_max_abs_diff < TOL and r.speedup_vs_ort == r.ort_ms / r.packed_ms
               for r in report.results)
    assert "ONNX Runtime (ms)" in report.table()
    assert "conv 3x3" in report.profile and report.profile["conv 3x3"]["macs"] > 0
    assert "speed-up" in report.table() and "GMAC/s" in report.profile_table()
    assert report.large_batch == 3 and "op (batch 3)" in report.profile_table(large=True)
    assert report.large_profile["conv 3x3"]["macs"] == 3 * report.profile["conv 3x3"]["macs"]
    assert sys.float_info.min / 2 != 0.0   # the caller's floating-point mode is restored (no flush-to-zero left on)


def test_packed_model_runs_without_pytorch(tmp_path, images):
    """An edge device carries NumPy and the kernels: loading and running must not import torch."""
    import subprocess
    import sys

    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125)
    PackedModel(compile_model(model, (3, 32, 32))).save(tmp_path / "m.npz")
    np.save(tmp_path / "x.npy", images[:2].numpy())
    script = f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not available here")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from dass.deploy.packed import PackedModel
out = PackedModel.load(r"{tmp_path / 'm.npz'}")(np.load(r"{tmp_path / 'x.npy'}"))
np.save(r"{tmp_path / 'out.npy'}", out)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        ref = model(images[:2]).numpy()
    assert np.abs(np.load(tmp_path / "out.npy") - ref).max() < TOL


class PaddedChain(nn.Module):
    """Conv outputs read only by padded stride-1 convs (and a residual): stored padded, read in place."""

    def __init__(self, pool_reader: bool):
        super().__init__()
        self.stem = SparseConv2d(3, 8, 3, padding=1, bias=True)
        self.conv2 = SparseConv2d(8, 8, 3, padding=1, bias=True)
        self.conv3 = SparseConv2d(8, 8, 3, padding=2, dilation=2, bias=True)
        self.pool_reader = pool_reader

    def forward(self, x):
        h = F.relu(self.stem(x))
        y = F.relu(self.conv2(h) + h)
        out = self.conv3(y)
        return out + F.max_pool2d(h, 3, 1, 1) if self.pool_reader else out


@pytest.mark.parametrize("sparsity", [0.0, 0.7])
def test_padded_storage(sparsity, images):
    for pool_reader in (False, True):
        model = _prune(PaddedChain(pool_reader), sparsity).eval()
        x = F.interpolate(images[:3], size=(9, 11))   # odd sizes: tile remainders next to the border
        prog = compile_model(model, (3, 9, 11))

        def field(k: int, name: str, prog=prog) -> int:
            return int(prog.instructions[k][Field[name]])

        convs = [k for k, label in enumerate(prog.labels) if label.startswith("conv")]
        stem, conv2, conv3 = convs
        # h feeds conv2 and its residual (and the pool when there is one); y feeds conv3 only
        assert field(stem, "OUT_PAD") == (0 if pool_reader else 1)
        assert field(conv2, "SCRATCH") == int(pool_reader) and field(conv2, "Y_PAD") == field(stem, "OUT_PAD")
        assert field(conv2, "OUT_PAD") == 2 and field(conv3, "SCRATCH") == 0
        for threads in (1, 2):
            packed = PackedModel(prog, threads=threads)
            with torch.no_grad():
                ref = model(x).numpy()
            for _ in range(2):   # the second run finds the arena dirty: borders must be written again
                assert float(np.abs(packed(x.numpy()) - ref).max()) < TOL


class SharedCopies(nn.Module):
    """Three strided convs of one input: the 1x1 can read the 3x3's padded copy (shifted by one), the 5x5
    (more padding than that copy has) and the dilated 3x3 (an in-place ReLU first: another input) cannot."""

    def __init__(self):
        super().__init__()
        self.stem = SparseConv2d(3, 8, 1, bias=True)
        self.a = SparseConv2d(8, 6, 3, stride=2, padding=1, bias=True)
        self.b = SparseConv2d(8, 6, 1, stride=2, bias=True)
        self.c = SparseConv2d(8, 6, 5, stride=2, padding=2, bias=True)
        self.d = SparseConv2d(8, 6, 3, stride=2, padding=2, dilation=2, bias=True)

    def forward(self, x):
        h = self.stem(x)
        return self.a(h) + self.b(h) + self.c(h) + self.d(F.relu(h))


@pytest.mark.parametrize("sparsity", [0.0, 0.7])
def test_shared_padded_copies(sparsity, images):
    model = _prune(SharedCopies(), sparsity).eval()
    x = F.interpolate(images[:3], size=(13, 11))
    prog = compile_model(model, (3, 13, 11))
    scratch = [Scratch(r[Field.SCRATCH]) for r, label in zip(prog.instructions, prog.labels) if label != "add"]
    own, earlier = Scratch.OWN_COPY, Scratch.EARLIER_COPY
    assert scratch == [Scratch.IN_PLACE, own, earlier, own, own]   # b reads a's copy, c and d copy their own
    for threads in (1, 2):
        with torch.no_grad():
            ref = model(x).numpy()
        assert float(np.abs(PackedModel(prog, threads=threads)(x.numpy()) - ref).max()) < TOL


def test_private_unfold_per_thread(images):
    """Stride-1 convs on 4x4 planes unfold into a copy per thread; the scratch follows the thread count."""
    model = _prune(Single(*CONVS["conv3x3"], act="relu"), 0.8).eval()
    x = images[:3, :, :4, :4].contiguous()
    prog = compile_model(model, (3, 4, 4))
    assert Scratch.PER_THREAD in prog.instructions[:, Field.SCRATCH] and prog.private_scratch_size > 0
    packed = PackedModel(prog, threads=1)
    with torch.no_grad():
        ref = model(x).numpy()
    for threads in (1, 2, 1, 2):   # the second thread needs its own copy: the buffers grow with the threads
        packed.threads = threads
        assert float(np.abs(packed(x.numpy()) - ref).max()) < TOL


@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_private_depthwise_copies(sparsity, images):
    """Depthwise convs copy each channel into the computing thread's own scratch (no shared copy): a DARTS network
    gives the same outputs with and without it, on either thread count and at an odd batch."""
    model = synthetic_model("genotype", sparsity, (3, 32, 32), genotype=DARTS_V1, init_channels=6, layers=5,
                            calibration=images)
    x = images[:3].numpy()
    with torch.no_grad():
        ref = model(images[:3]).numpy()
    outs = []
    for on in (True, False):
        # (composing separable pairs would leave no depthwise conv at 99%)
        prog = compile_model(model, (3, 32, 32), options=CompileOptions(private_depthwise=on, compose_separable=0))
        assert (Scratch.PER_CHANNEL in prog.instructions[:, Field.SCRATCH]) == on
        for threads in (1, 2):
            outs.append(PackedModel(prog, threads=threads)(x))
            assert float(np.abs(outs[-1] - ref).max()) < TOL
            assert float(np.abs(PackedModel(prog, threads=threads)(x[1:2]) - outs[-1][1:2]).max()) < 1e-5
    assert max(float(np.abs(o - outs[0]).max()) for o in outs) < 1e-5


class _PositionalPools(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, 3, 1, 1, False, False) + F.avg_pool2d(x, 3, 1, 1, False, True)


@pytest.mark.parametrize("module", [nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.AvgPool2d(3, 2, 1),
                                    nn.MaxPool2d(3, 2, 1), _PositionalPools()], ids=["avg", "avg-s2", "max", "fn"])
def test_pools_as_the_whole_model_and_with_positional_arguments(module, images):
    """A pool traced as the root module arrives as a functional call with positional arguments
    (count_include_pad among them); the runtime must honour them."""
    assert _check(module.eval(), images[:2]) < TOL


def _assert_batch_matches_single_images(model: nn.Module, x: np.ndarray) -> None:
    packed = PackedModel(compile_model(model, tuple(x.shape[1:])))
    alone = np.concatenate([packed(x[i:i + 1]) for i in range(len(x))])
    assert np.abs(packed(x) - alone).max() < 1e-5


@pytest.mark.parametrize("name", sorted(CONVS))
def test_image_blocks_match_single_images(name, images):
    """At batch > 1 the kernels compute blocks of images together (an odd batch ends with a single image):
    every image's output must match running it alone."""
    model = _prune(Single(*CONVS[name], act="relu" if "s2" in name else "pre"), 0.9)
    calibrate_batchnorm(model, images)
    model.eval()
    _assert_batch_matches_single_images(model, images[:5].numpy())


def test_image_blocks_in_a_network(images):
    """The same through a ResNet (padded outputs, fused residuals, unfolded 4x4 layers with 16-bit taps)."""
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.25)
    _assert_batch_matches_single_images(model, images[:5].numpy())


def test_block_copies_at_large_batches(images):
    """With a block of images per thread, convs copy their input block by block as they go (into a thread's own
    scratch, or into the shared copy a ResNet shortcut reads after its 3x3 conv): any thread count gives the
    outputs of the images run alone, and PyTorch's."""
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.25)
    x = images[:9].numpy()
    prog = compile_model(model, (3, 32, 32), options=CompileOptions(shifted_copies=False))   # (padded copies)
    assert Scratch.EARLIER_COPY in prog.instructions[:, Field.SCRATCH]
    with torch.no_grad():
        ref = model(images[:9]).numpy()
    alone = np.concatenate([PackedModel(prog, threads=1)(x[i:i + 1]) for i in range(len(x))])
    for threads in (1, 2, 3):
        out = PackedModel(prog, threads=threads)(x)
        assert np.abs(out - alone).max() < 1e-5 and np.abs(out - ref).max() < TOL


@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_shifted_copies(sparsity, images):
    """Stride-1 convs on column-shifted copies (blocked by chunks of input channels, partial sums in the output) give
    the outputs of padded copies and PyTorch's: at batch 1 and below the thread count (a shared copy, blocks of
    output channels) and above it (each thread copies the image it computes), on 1-3 threads."""
    model = synthetic_model("resnet18", sparsity, (3, 32, 32), width=0.25)
    x = images[:5].numpy()
    with torch.no_grad():
        ref = model(images[:5]).numpy()
    progs = [compile_model(model, (3, 32, 32), options=CompileOptions(shifted_copies=on)) for on in (True, False)]
    ins = progs[0].instructions
    shifted = ins[(ins[:, Field.OP] == Op.CONV) & (ins[:, Field.IM2COL] == Layout.SHIFTED)]
    assert len(shifted) >= 8 and (shifted[:, Field.AUX] < shifted[:, Field.C]).any()   # (several chunks)
    assert (shifted[:, Field.SCRATCH] == Scratch.EARLIER_COPY).sum() == 2   # (the shortcuts ride their 3x3 convs)
    assert Layout.SHIFTED not in progs[1].instructions[:, Field.IM2COL]
    for threads in (1, 2, 3):
        outs = [PackedModel(prog, threads=threads) for prog in progs]
        for n in (1, 2, 5):
            on, off = (packed(x[:n]) for packed in outs)
            assert np.abs(on - ref[:n]).max() < TOL and np.abs(on - off).max() < 1e-5


class _RiderWithResidual(nn.Module):
    """A 1x1 stride-2 conv riding a 3x3 stride-2 conv's column-shifted copy, with the 3x3 conv's output as its
    residual: the rider must wait for its conv's outputs on every path (a shared copy at batch 1 too)."""

    def __init__(self):
        super().__init__()
        self.stem = SparseConv2d(3, 16, 1, bias=True)
        self.conv = SparseConv2d(16, 32, 3, stride=2, padding=1, bias=True)
        self.short = SparseConv2d(16, 32, 1, stride=2, bias=True)

    def forward(self, x):
        h = self.stem(x)
        return F.relu(self.conv(h) + self.short(h))


def test_rider_reads_its_convs_output(images):
    model = _prune(_RiderWithResidual(), 0.5).eval()
    prog = compile_model(model, (3, 32, 32))
    ins = prog.instructions
    rider = (ins[:, Field.SCRATCH] == Scratch.EARLIER_COPY) & (ins[:, Field.AUX] > 0)
    assert rider.sum() == 1 and ins[rider][0, Field.Y] == ins[np.flatnonzero(rider)[0] - 1, Field.OUT]
    with torch.no_grad():
        ref = model(images[:3]).numpy()
    for threads in (1, 2, 3):
        packed = PackedModel(prog, threads=threads)
        for n in (1, 2, 3):
            for _ in range(3):
                assert np.abs(packed(images[:n].numpy()) - ref[:n]).max() < TOL


@pytest.mark.parametrize("unfold", [0, 16, 64, 256])
def test_unfold_thresholds_agree(unfold, images):
    """Unfolding the input of small planes (4x4 by default) is a layout choice: every threshold gives the
    PyTorch outputs."""
    model = synthetic_model("resnet18", 0.9, (3, 32, 32), width=0.125)
    packed = PackedModel(compile_model(model, (3, 32, 32), options=CompileOptions(unfold_max_pixels=unfold)))
    with torch.no_grad():
        ref = model(images[:3]).numpy()
    assert np.abs(packed(images[:3].numpy()) - ref).max() < TOL
