"""A packed-model file must never make the runtime read or write outside its buffers: damaged or hostile files
and programs are refused with a DassError (targeted cases for each kind of damage, then a fuzz test that runs
hundreds of mutated files in a subprocess with guard pages around every buffer the runtime touches)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dass.deploy.compiler import compile_model
from dass.deploy.packed import PackedModel
from dass.deploy.program import Field, Layout, Op, Scratch
from dass.deploy.speed import calibrate_batchnorm
from dass.deploy.validate import MAX_FIELD, validate_program
from dass.errors import DassError
from dass.sparse import SparseConv2d, SparseLinear, init_scores, set_sparsity

SHAPE = (3, 16, 16)
REEXPORT = "dass export RUN_DIR"


class Everything(nn.Module):
    """Every op and conv variant of the format: convs reading their input copied (stride 1, 2, 3), in place
    from a padded value, or from an earlier conv's copy; convs on column-shifted copies (stride 1 and 2, with a
    fused residual, placed after a copy a later conv reads), one with a rider reading its copy; a pointwise conv
    with chunked taps on its input in place; unfolded convs (shared and per-thread copies, 16-bit taps, dense);
    dense grouped and dilated; a fused residual read padded; pools of each kind; a zero op and a pool written into
    their slices of a concatenation; depthwise convs copying each channel as they go (sparse and dense); channel
    copies; a BN left as an affine op; crops and pads; standalone activation and additions; global pooling and a
    linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = SparseConv2d(3, 6, 1, groups=3, bias=True)
        self.conv2 = SparseConv2d(6, 6, 3, padding=1, groups=2, bias=True)
        self.dense = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2)
        self.down = SparseConv2d(6, 12, 3, stride=2, padding=1, groups=2)
        self.down2 = SparseConv2d(6, 12, 3, stride=2, padding=1)
        self.short2 = SparseConv2d(6, 12, 1, stride=2)
        self.short = SparseConv2d(6, 12, 1, stride=2)
        self.mid = SparseConv2d(12, 12, 3, padding=1)
        self.s3 = SparseConv2d(6, 4, 3, stride=3, padding=1)
        self.small = SparseConv2d(12, 12, 3, stride=2, padding=1)
        self.tiny = SparseConv2d(12, 12, 3, padding=1)
        self.tiny_dense = nn.Conv2d(12, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(36)
        self.max = nn.MaxPool2d(3, 2, 1)
        self.avg = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.avg_pad = nn.AvgPool2d(3, 1, 1)
        self.dw = SparseConv2d(12, 12, 3, padding=1, groups=12)
        self.dw_dense = nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12)
        self.pw = SparseConv2d(12, 12, 1)
        self.fc = SparseLinear(36 + 4 + 6 + 6 + 12, 5)

    def forward(self, x):
        h = F.relu(self.stem(x))
        y = F.relu(self.conv2(h) + h)
        d = self.dense(y)
        a = self.down(d)
        a = self.mid(a) + a + self.short(d) + self.down2(d) + self.short2(d)
        m = self.max(a)
        sm = F.relu(self.small(a))
        z = F.relu6(self.bn(torch.cat([self.tiny(sm), m, m * 0.0], dim=1)))
        p = self.avg(z) + self.avg_pad(z)
        q = F.pad(self.s3(y), (0, 1, 0, 1))[:, :, 1:, 1:]
        e = self.pw(self.dw_dense(F.relu(self.dw(F.relu(a)))))
        parts = [p, F.relu(q) + q, self.tiny_dense(sm), torch.cat([x, x], dim=1), e]
        return self.fc(torch.cat([F.adaptive_avg_pool2d(t, 1) for t in parts], 1).flatten(1))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = Everything()
    init_scores(m)
    set_sparsity(m, 0.7)
    calibrate_batchnorm(m, torch.randn(64, *SHAPE))
    return m.eval()


@pytest.fixture(scope="module")
def program(model):
    return compile_model(model, SHAPE)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(program, tmp_path_factory) -> Path:
    return PackedModel(program).save(tmp_path_factory.mktemp("packed") / "model_packed.npz")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _write(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _meta(arrays: dict) -> dict:
    return json.loads(arrays["meta"].tobytes())


def _with_meta(arrays: dict, meta) -> dict:
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return {**arrays, "meta": np.frombuffer(raw, np.uint8)}


def _refused(fn, *match: str) -> str:
    with pytest.raises(DassError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for m in match:
        assert m in message, message
    return message


def _first(program, op: Op, **fields) -> int:
    """The first instruction of kind `op` whose fields have these values."""
    for k, row in enumerate(program.instructions):
        if row[Field.OP] == op and all(row[Field[n]] == v for n, v in fields.items()):
            return k
    raise AssertionError(f"no {op.name} with {fields}")


def _edit(program, k: int, **fields):
    table = program.instructions.copy()
    for name, v in fields.items():
        table[k, Field[name]] = v
    return replace(program, instructions=table)


# ---- the program covers the format -----------------------------------------------------------------------

def test_the_test_model_covers_every_op_and_conv_variant(program, model, x):
    ins = program.instructions
    assert set(ins[:, Field.OP]) == {int(op) for op in Op}
    convs = ins[ins[:, Field.OP] == Op.CONV]
    assert set(convs[:, Field.SCRATCH]) == {int(s) for s in Scratch}
    assert {1, 2, 3} <= set(convs[:, Field.STRIDE])
    for name in ("ROWS16", "DENSE", "OUT_PAD", "Y_PAD"):
        assert convs[:, Field[name]].max() > 0, name
    assert set(convs[:, Field.IM2COL]) == {int(layout) for layout in Layout}
    shifted = convs[convs[:, Field.IM2COL] == Layout.SHIFTED]
    assert (shifted[:, Field.AUX2] > 0).all() and (shifted[:, Field.Y] >= 0).any()
    assert set(shifted[:, Field.STRIDE]) == {1, 2}
    assert (shifted[:, Field.SCRATCH] == Scratch.EARLIER_COPY).any()   # (a rider)
    assert ((convs[:, Field.SCRATCH] == Scratch.IN_PLACE) & (convs[:, Field.AUX] > 0)).any()   # (chunked pointwise)
    assert (convs[:, Field.Y] >= 0).any() and (convs[:, Field.GROUPS] > 1).any()
    assert set(ins[ins[:, Field.OP] == Op.POOL][:, Field.AUX]) == {0, 1, 2}
    zero = _first(program, Op.ZERO)
    assert ins[zero, Field.OUT_AT] > 0   # written into its slice of a concatenation
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for threads in (1, 2):
        assert np.abs(PackedModel(program, threads=threads)(x) - ref).max() < 1e-4


def test_zero_op_in_a_concatenation_slice_clears_only_its_slice(tmp_path):
    """run_zero used to clear the whole image stride from its slice: the other slices were zeroed and the last
    image ran past the buffer (heap corruption: "double free or corruption")."""

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            h = self.b(x)
            return torch.cat([self.a(x), h * 0.0, h], dim=1)

    model = Cat().eval()
    x = torch.randn(3, 3, 5, 5)
    program = compile_model(model, (3, 5, 5))
    assert program.instructions[_first(program, Op.ZERO), Field.OUT_AT] > 0
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(PackedModel(program, threads=2)(x.numpy()) - ref).max() < 1e-5


# ---- the reported cases ----------------------------------------------------------------------------------

def test_short_ipool_is_refused(saved, tmp_path, x):
    z = _arrays(saved)
    z["ipool"] = z["ipool"][:10]
    bad = _write(tmp_path / "m.npz", z)
    _refused(lambda: PackedModel.load(bad), "instruction #", "ipool", REEXPORT)


def test_short_fpool_is_refused(saved, tmp_path):
    z = _arrays(saved)
    z["fpool"] = z["fpool"][:-1]   # the last float is the linear layer's last bias
    bad = _write(tmp_path / "m.npz", z)
    _refused(lambda: PackedModel.load(bad), "instruction #", "fpool", REEXPORT)
    z["fpool"] = z["fpool"][:10]
    _refused(lambda: PackedModel.load(_write(tmp_path / "m.npz", z)), "fpool", REEXPORT)


@pytest.mark.parametrize("field,value,match", [
    ("X", 10**6, "ends past the arena"),
    ("OUT", -16, "[0, "),
    ("OUT_AT", 10**5, "outside its"),
    ("X_IMG", 0, "a size must lie in [1,"),
    ("TAPS", 10**8, "ipool"),
    ("ROWPTR", 10**7, "ipool"),
    ("WEIGHT", 10**6, "fpool"),
    ("CHANNELS", -5, "[0, "),
    ("C", 2**40, "a size must lie in"),
    ("HQ", 1, "HQ=1"),
    ("K", 0, "K=0"),
    ("SCRATCH", 7, "unknown Scratch code"),
    ("AUX", 3, "chunked taps (AUX > 0) need"),   # (the runtime would read a padded copy as a shifted one)
    ("ACT", 3, "unknown Act code"),
])
def test_offsets_and_sizes_out_of_range_are_refused(program, field, value, match):
    k = _first(program, Op.CONV, SCRATCH=int(Scratch.OWN_COPY), DENSE=0, IM2COL=int(Layout.PADDED))
    _refused(lambda: PackedModel(_edit(program, k, **{field: value})), f"instruction #{k} (conv), field {field}=",
             REEXPORT, match)


@pytest.mark.parametrize("field,value,match", [
    ("AUX", 0, "must lie in"),
    ("AUX", 13, "a chunk holds 1 to C"),
    ("AUX2", 10**6, "scratch_size"),
    ("WQ", 7, "WQ = WO"),
    ("OUT_PAD", 1, "outside its"),
    ("STRIDE", 9, "stride 8 or less"),
    ("PAD", 2, "HQ = HO"),
    ("HQ", 11, "HQ = HO"),
    ("SCRATCH", int(Scratch.PER_THREAD), "SCRATCH = OWN_COPY"),
])
def test_shifted_conv_fields_are_checked(program, field, value, match):
    """run_conv_chunked: chunks of input channels, the copy's place in the scratch and its flat planes."""
    k = _first(program, Op.CONV, IM2COL=int(Layout.SHIFTED))
    _refused(lambda: PackedModel(_edit(program, k, **{field: value})), f"instruction #{k} (conv)", REEXPORT, match)


def test_riders_are_checked(program):
    """A rider (EARLIER_COPY with chunked taps) is computed by the conv before it, on that conv's copy: it must
    follow such a conv and match its copy."""
    k = _first(program, Op.CONV, IM2COL=int(Layout.SHIFTED), SCRATCH=int(Scratch.EARLIER_COPY))
    for edit, match in (({"C": 4}, "reads its conv's copy"), ({"HO": 2}, "")):
        _refused(lambda: PackedModel(_edit(program, k, **edit)), f"instruction #{k} (conv)", REEXPORT, match)
    maker = _edit(program, k - 1, IM2COL=int(Layout.PADDED), AUX=0)
    _refused(lambda: PackedModel(maker), REEXPORT)
    order = np.arange(len(program.instructions))   # the rider moved away from its conv
    order[k], order[k + 1] = k + 1, k
    moved = replace(program, instructions=program.instructions[order], labels=[program.labels[j] for j in order],
                    macs=[program.macs[j] for j in order])
    _refused(lambda: PackedModel(moved), "follows a conv that makes a column-shifted copy")


def test_shifted_conv_segments_are_checked(program):
    """The row pointers of a shifted conv: one segment per (chunk, output channel), never decreasing."""
    k = _first(program, Op.CONV, IM2COL=int(Layout.SHIFTED))
    row = program.instructions[k]
    segments = -(-int(row[Field.C]) // int(row[Field.AUX])) * int(row[Field.CO])
    ipool = program.ipool.copy()
    ipool[row[Field.ROWPTR] + segments] = 10**6   # the last pointer: past the taps and weights
    _refused(lambda: PackedModel(replace(program, ipool=ipool)), f"instruction #{k} (conv)", REEXPORT)
    ipool = program.ipool.copy()
    ipool[row[Field.ROWPTR] + segments // 2] = -1
    _refused(lambda: PackedModel(replace(program, ipool=ipool)), "ROWPTR")


def test_tap_and_channel_indices_are_checked(program):
    k = _first(program, Op.CONV, SCRATCH=int(Scratch.OWN_COPY), DENSE=0, IM2COL=0)
    row = program.instructions[k]
    for taps_at, value in ((row[Field.TAPS] + int(program.ipool[row[Field.ROWPTR]]), -1),
                           (row[Field.TAPS] + int(program.ipool[row[Field.ROWPTR] + row[Field.CO]]) - 1, 10**7),
                           (row[Field.CHANNELS], row[Field.C])):
        ipool = program.ipool.copy()
        ipool[taps_at] = value
        _refused(lambda: PackedModel(replace(program, ipool=ipool)), f"instruction #{k} (conv)", REEXPORT)
    ipool = program.ipool.copy()   # row pointers that decrease
    ipool[row[Field.ROWPTR] + 1], ipool[row[Field.ROWPTR] + 2] = 5, 4
    _refused(lambda: PackedModel(replace(program, ipool=ipool)), "ROWPTR", "never decrease")


@pytest.mark.parametrize("op,field,value,match", [
    (Op.POOL, "AUX", 3, "unknown PoolKind code"),
    (Op.POOL, "HO", 100, "end past the padded input"),
    (Op.POOL, "PAD", 2, "at most half"),
    (Op.SHIFT, "WO", 1000, "outside its"),
    (Op.SHIFT, "AUX", 2**40, "must lie in"),
    (Op.COPY_CHANNELS, "AUX", 1000, "outside its"),
    (Op.ZERO, "CO", 1000, "outside its"),
    (Op.GAP, "H", 100, "outside its"),
    (Op.AFFINE, "WEIGHT", 10**6, "fpool"),
    (Op.ADD, "Y_IMG", -1, "a size must lie in"),
    (Op.ACT, "C", 10**4, "outside its"),
])
def test_other_ops_are_checked(program, op, field, value, match):
    k = _first(program, op)
    _refused(lambda: PackedModel(_edit(program, k, **{field: value})), f"instruction #{k} ({op.name.lower()})",
             match, REEXPORT)


def test_bad_op_code_is_refused(program):
    for code in (0, 10, -1, 2**62):
        _refused(lambda: PackedModel(_edit(program, 3, OP=code)), "instruction #3", "unknown Op code", REEXPORT)


def test_meta_is_checked(program):
    for change, match in [(dict(arena_size=program.arena_size - 16), "arena"),
                          (dict(arena_size=2**40), "arena_size"),
                          (dict(scratch_size=0), "scratch_size"),
                          (dict(private_scratch_size=16), "private_scratch_size"),
                          (dict(input_offset=program.arena_size), "input"),
                          (dict(output_offset=-1), "output_offset"),
                          (dict(input_shape=(3, 16)), "input_shape"),
                          (dict(output_shape=(5, 1, 0)), "output_shape"),
                          (dict(output_dims=(6,)), "output_dims"),
                          (dict(labels=program.labels[:-1]), "labels"),
                          (dict(macs=program.macs + [1]), "macs"),
                          (dict(macs=[1.5] * len(program.macs)), "macs[0]"),
                          (dict(arena_size=float(program.arena_size)), "not an integer"),
                          (dict(arena_size=True), "not an integer"),
                          (dict(fpool=program.fpool.astype(np.float64)), "fpool"),
                          (dict(ipool=program.ipool.astype(np.int64)), "ipool"),
                          (dict(instructions=program.instructions[:, :-1]), "fields"),
                          (dict(instructions=program.instructions.astype(np.int32)), "instruction table")]:
        _refused(lambda: PackedModel(replace(program, **change)), match, REEXPORT)


def test_threads_must_be_a_positive_integer(program, x):
    for threads in (0, -1, 2.0, True, "2", None, 10**6):
        _refused(lambda: PackedModel(program, threads=threads), "threads")
    packed = PackedModel(program, threads=1)
    for threads in (0, -1):
        with pytest.raises(DassError, match="threads"):
            packed.threads = threads
    assert packed.threads == 1
    ref = packed(x)
    packed.threads = np.int64(2)
    np.testing.assert_array_equal(packed(x), ref)
    packed._thread_bytes = 2**29   # (a program whose pools and counters the runtime allocates per thread)
    packed.threads = 4
    _refused(lambda: packed(x), "use fewer threads")


def test_inputs_are_checked(program, x):
    packed = PackedModel(program)
    for bad in (x[0, 0], x[:, :, :8], "images", [[1, 2], [3]], np.zeros((1, 1, *SHAPE), np.float32)):
        _refused(lambda: packed(bad))
    assert packed(x[:0]).shape == (0, 5)
    np.testing.assert_array_equal(packed(x[0]), packed(x[:1]))


def test_program_changed_after_validation_cannot_reach_the_runtime(program, x):
    """The runtime runs private copies of the validated arrays."""
    mine = replace(program, instructions=program.instructions.copy(), ipool=program.ipool.copy())
    packed = PackedModel(mine)
    ref = packed(x)
    mine.instructions[:, Field.X] = 10**9
    mine.ipool[:] = -(10**6)
    mine.arena_size = 1
    np.testing.assert_array_equal(packed(x), ref)


# ---- files -----------------------------------------------------------------------------------------------

def test_broken_files_are_refused(saved, tmp_path, x):
    data = saved.read_bytes()
    cases = {
        "garbage": b"\x00garbage" * 100,
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "truncated_end": data[:-10],
        "npy": b"",   # (set below: a plain .npy array instead of an archive)
        "pickle": b"\x80\x04K\x01.",
    }
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    cases["npy"] = buf.getvalue()
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x55   # inside an array: the zip CRC fails
    cases["bitflip"] = bytes(flipped)
    for name, content in cases.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(content)
        _refused(lambda: PackedModel.load(bad), str(bad))
    z = _arrays(saved)
    meta = _meta(z)
    arrays_cases = {
        "no_ipool": {k: v for k, v in z.items() if k != "ipool"},
        "no_meta": {k: v for k, v in z.items() if k != "meta"},
        "meta_list": _with_meta(z, [1, 2]),
        "meta_number": _with_meta(z, 3),
        "meta_not_utf8": _with_meta(z, b"\xff\xfe{"),
        "meta_cut": _with_meta(z, json.dumps(meta).encode()[:-5]),
        "meta_float": {**z, "meta": z["meta"].astype(np.float32)},
        "no_arena_size": _with_meta(z, {k: v for k, v in meta.items() if k != "arena_size"}),
        "shape_not_list": _with_meta(z, {**meta, "input_shape": 3}),
        "labels_dict": _with_meta(z, {**meta, "labels": {"a": 1}}),
        "version": _with_meta(z, {**meta, "version": 1}),
        "format": _with_meta(z, {**meta, "format": "other"}),
        "swapped": {**z, "fpool": z["ipool"], "ipool": z["fpool"]},
        "object_array": None,
    }
    for name, arrays in arrays_cases.items():
        bad = tmp_path / f"{name}.npz"
        if arrays is None:   # an object array (pickled): refused by allow_pickle=False
            np.savez(bad, **{**z, "ipool": np.array([1, "a"], dtype=object)})
        else:
            _write(bad, arrays)
        _refused(lambda: PackedModel.load(bad))
    # a zip whose member is compressed and damaged: a zlib error
    bad = tmp_path / "zlib.npz"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in z.items():
            b = io.BytesIO()
            np.save(b, v)
            zf.writestr(f"{k}.npy", b.getvalue())
    raw = bytearray(bad.read_bytes())
    start = raw.index(b"ipool.npy") + 20
    raw[start: start + 40] = bytes(40)
    bad.write_bytes(bytes(raw))
    _refused(lambda: PackedModel.load(bad))
    # the intact file still loads and runs
    np.testing.assert_array_equal(PackedModel.load(saved)(x), PackedModel.load(saved)(x))


def test_validation_accepts_what_the_compiler_writes(program):
    validate_program(program)
    assert MAX_FIELD >= 2**30 - 1


# ---- fuzzing ---------------------------------------------------------------------------------------------

# The worker: loads each mutated file and runs it at batch 1 (2 threads: per-thread copies) and 2 (1 thread),
# twice: with every buffer the runtime reads or writes (instruction table, pools, arena, scratch) ending right
# before an inaccessible page, then starting right after one; so an access past either end of a buffer kills
# the process (SIGSEGV) instead of reading garbage. It writes "start I" before case I and "I STATUS" after it;
# the parent restarts it after a crash (or a hang: faulthandler ends it) at the case that follows.
WORKER = textwrap.dedent(r'''
    import ctypes, faulthandler, mmap, sys
    import numpy as np
    import dass.deploy.packed as packed_module
    from dass.deploy.packed import PackedModel
    from dass.errors import DassError

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    PAGE = mmap.PAGESIZE
    AT_END = True

    def guarded(a):
        """A copy of `a` between two PROT_NONE pages, against the end (AT_END) or the start of its memory."""
        a = np.ascontiguousarray(a)
        n = max(a.nbytes, 1)
        pages = -(-n // PAGE)
        m = mmap.mmap(-1, (pages + 2) * PAGE)
        anchor = ctypes.c_char.from_buffer(m)
        base = ctypes.addressof(anchor)
        del anchor
        for at in (base, base + (pages + 1) * PAGE):
            if libc.mprotect(at, PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")
        offset = (pages + 1) * PAGE - n if AT_END else PAGE
        out = np.frombuffer(m, np.uint8, count=a.nbytes, offset=offset).view(a.dtype).reshape(a.shape)
        out[...] = a
        return out

    packed_module._aligned_zeros = lambda count: guarded(np.zeros(max(1, count), np.float32))

    RUNS = ((1, 2), (2, 1))   # (batch, threads) (batch 1: per-thread copies; 1 thread: no barriers)

    def run(path, x):
        global AT_END
        model = PackedModel.load(path, threads=2)
        outs = []
        for AT_END in (True, False):
            model._instructions, model._fpool, model._ipool = (guarded(a) for a in (
                model._instructions, model._fpool, model._ipool))
            if model._batched is not None:
                model._batched_ins, model._batched_io = guarded(model._batched_ins), guarded(model._batched_io)
            for batch, threads in RUNS:
                model.threads, model._shape = threads, (0, 0)   # new guarded arena and scratch
                model._arenas = np.zeros(0, np.float32)         # (and the batched program's)
                outs.append(model(x[:batch]))
        return outs

    def same(a, b):
        return all(p.size == q.size and np.array_equal(p.ravel(), q.ravel(), equal_nan=True) for p, q in zip(a, b))

    folder, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x = np.load(folder + "/x.npy")
    reference = run(folder + "/original.npz", x)
    results = open(folder + "/results.txt", "a", buffering=1)
    for i in range(first, count):
        results.write(f"start {i}\n")
        if (i - first) % 20 == 0:   # a hang inside the kernels ends the process (after "start I")
            faulthandler.dump_traceback_later(60, exit=True)
        try:
            outs = run(f"{folder}/{i}.npz", x)
            status = "same" if same(outs, reference) else "diff"
        except DassError:
            status = "refused"
        except Exception as exc:
            status = f"error {type(exc).__name__}: {str(exc)[:200]!r}"
        results.write(f"{i} {status}\n")
    faulthandler.cancel_dump_traceback_later()
''')

# Fields whose values are data: any value is a valid program that computes something else
FREE_FIELDS = {Op.SHIFT: {"AUX", "AUX2"}, Op.CONV: {"PHASES", "DENSE", "IM2COL", "ROWS16"}}
# ... and fields where a negative value can be valid: none (Y, BIAS), or an offset before a slice's start
NEGATIVE_VALID = {Op.CONV: {"Y", "BIAS"}, Op.COPY_CHANNELS: {"OUT_AT"}}


class Mutator:
    """Random damage to a packed file, each case with what it may lead to: "same" (refused, or the original
    outputs exactly), or "any" (refused, or any outputs: the mutation may make another valid program)."""

    def __init__(self, arrays: dict, seed: int):
        self.base = arrays
        self.base_meta = _meta(arrays)
        self.rng = np.random.default_rng(seed)

    def case(self) -> tuple[dict | bytes, str, str]:
        kinds = ["truncate", "flip_instructions", "flip_ipool", "flip_fpool", "swap", "large", "negative",
                 "small", "meta", "several", "file_bytes"]
        weights = np.array([2, 3, 3, 1, 1, 3, 3, 3, 3, 2, 1], float)
        kind = kinds[self.rng.choice(len(kinds), p=weights / weights.sum())]
        arrays = {k: v.copy() for k, v in self.base.items()}
        expect = getattr(self, kind)(arrays)
        return arrays, kind, expect

    def _pick_field(self, arrays) -> tuple[int, str, Op]:
        ins = arrays["instructions"]
        k = int(self.rng.integers(len(ins)))
        return k, Field(int(self.rng.integers(len(Field)))).name, Op(int(self.base["instructions"][k, 0]))

    def truncate(self, arrays) -> str:
        name = self.rng.choice(["instructions", "fpool", "ipool", "instructions_columns"])
        if name == "instructions_columns":
            arrays["instructions"] = arrays["instructions"][:, : self.rng.integers(arrays["instructions"].shape[1])]
        else:
            arrays[name] = arrays[name][: self.rng.integers(len(arrays[name]))]
        return "same"   # (what is cut off may be unused: then the outputs stay)

    def _flip(self, a: np.ndarray) -> None:
        flat = a.reshape(-1).view(np.uint8)
        flat[self.rng.integers(flat.size)] ^= np.uint8(1 << int(self.rng.integers(8)))

    def flip_instructions(self, arrays) -> str:
        self._flip(arrays["instructions"])
        return "any"

    def flip_ipool(self, arrays) -> str:
        self._flip(arrays["ipool"])
        return "any"

    def flip_fpool(self, arrays) -> str:
        self._flip(arrays["fpool"])
        return "any"

    def swap(self, arrays) -> str:
        a, b = self.rng.choice(["instructions", "fpool", "ipool", "meta"], 2, replace=False)
        arrays[a], arrays[b] = arrays[b], arrays[a]
        return "same"

    def large(self, arrays) -> str:
        k, name, op = self._pick_field(arrays)
        value = int(self.rng.choice([2**31 + int(self.rng.integers(100)), 2**40, 2**62, MAX_FIELD + 1,
                                     10**6 + int(self.rng.integers(1000))]))
        arrays["instructions"][k, Field[name]] = value
        return "any" if name in FREE_FIELDS.get(op, ()) else "same"

    def negative(self, arrays) -> str:
        k, name, op = self._pick_field(arrays)
        value = int(self.rng.choice([-1, -2, -int(self.rng.integers(3, 1000)), -(2**31), -(2**62)]))
        arrays["instructions"][k, Field[name]] = value
        return "any" if name in FREE_FIELDS.get(op, set()) | NEGATIVE_VALID.get(op, set()) else "same"

    def small(self, arrays) -> str:
        k, name, _ = self._pick_field(arrays)
        v = arrays["instructions"][k, Field[name]]
        arrays["instructions"][k, Field[name]] = self.rng.choice([v - 1, v + 1, v + 16, v // 2,
                                                                  int(self.rng.integers(0, 64))])
        return "any"

    def meta(self, arrays) -> str:
        meta = json.loads(json.dumps(self.base_meta))
        key = self.rng.choice(["arena_size", "scratch_size", "private_scratch_size", "input_offset",
                               "output_offset", "input_shape", "output_shape", "output_dims", "labels", "macs",
                               "format", "version", "drop", "garbage"])
        expect = "same"
        if key in ("arena_size", "scratch_size", "private_scratch_size"):
            v = meta[key]
            meta[key] = self.rng.choice([0, -1, v - 1, v - 16, v // 2, v + 1, v * 2, 2**40, 2**62]).item()
        elif key in ("input_offset", "output_offset"):
            v = meta[key]
            meta[key] = self.rng.choice([-1, v - 1, v + 1, v + 16, meta["arena_size"], 2**40]).item()
            expect = "any"   # (another place in the arena)
        elif key in ("input_shape", "output_shape", "output_dims"):
            v = list(meta[key])
            j = int(self.rng.integers(len(v)))
            v[j] = self.rng.choice([0, -1, v[j] + 1, 2**40]).item()
            meta[key] = v if self.rng.random() < 0.8 else v[:-1]
        elif key in ("labels", "macs"):
            meta[key] = meta[key][:-1] if self.rng.random() < 0.5 else meta[key] + meta[key][:1]
        elif key in ("format", "version"):
            meta[key] = "x"
        elif key == "drop":
            del meta[self.rng.choice(sorted(meta))]
        else:
            meta = [[1], "x", 3.5, None, {"arena_size": 1}][int(self.rng.integers(5))]
        arrays.update(_with_meta(arrays, meta))
        return expect

    def several(self, arrays) -> str:
        for _ in range(int(self.rng.integers(2, 5))):
            getattr(self, self.rng.choice(["flip_instructions", "flip_ipool", "small", "large", "negative"]))(arrays)
        return "any"

    def file_bytes(self, arrays) -> str:
        arrays["__bytes__"] = True   # (the case writer damages the file's bytes)
        return "same"


def _write_case(path: Path, arrays: dict, rng: np.random.Generator) -> None:
    if arrays.pop("__bytes__", False):
        _write(path, arrays)
        data = bytearray(path.read_bytes())
        if rng.random() < 0.5:
            data = data[: int(rng.integers(len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
    else:
        _write(path, arrays)


FUZZ_CASES = 3000
FUZZ_SEED = 20260101


def _run_worker(folder: Path, count: int, code: str = WORKER) -> dict[int, str]:
    """Run cases 0 .. count - 1 of `folder` in worker processes; a case that kills its worker (a signal, or
    the exit of the hang watchdog) is "crash ...", the next worker starts after it."""
    outcomes: dict[int, str] = {}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    results, first = folder / "results.txt", 0
    for _ in range(count + 1):
        proc = subprocess.run([sys.executable, "-c", code, str(folder), str(first), str(count)],
                              capture_output=True, text=True, env=env, timeout=600)
        started = None
        for line in results.read_text().splitlines() if results.exists() else []:
            head, _, rest = line.partition(" ")
            if head == "start":
                started = int(rest)
            else:
                outcomes[int(head)] = rest
        if proc.returncode == 0:
            break
        assert started is not None and started not in outcomes, proc.stderr[-3000:]
        outcomes[started] = f"crash (exit status {proc.returncode}): {proc.stderr[-300:]!r}"
        with open(results, "a") as fh:
            fh.write(f"{started} {outcomes[started]}\n")
        first = started + 1
    assert len(outcomes) == count
    return outcomes


def test_fuzz_worker_catches_accesses_outside_the_buffers(saved, x, tmp_path):
    """The harness itself: without the validator, the reported short pools crash the worker at the guard
    pages (a short fpool otherwise reads past its buffer and returns NaN with exit status 0)."""
    _write(tmp_path / "original.npz", _arrays(saved))
    np.save(tmp_path / "x.npy", x)
    for i, name in enumerate(("fpool", "ipool")):
        z = _arrays(saved)
        z[name] = z[name][: -1 if name == "fpool" else 10]
        _write(tmp_path / f"{i}.npz", z)
    _write(tmp_path / "2.npz", _arrays(saved))
    unchecked = "import dass.deploy.packed as _p\n_p.validate_program = lambda program: None\n" + WORKER
    outcomes = _run_worker(tmp_path, 3, unchecked)
    assert outcomes[0].startswith("crash") and outcomes[1].startswith("crash"), outcomes
    assert outcomes[2] == "same"


def test_fuzzed_files_are_refused_or_run_safely(saved, x, tmp_path):
    """Random damage to a packed file is refused with a DassError or runs without touching memory outside
    the runtime's buffers: never a crash (caught through guard pages), a hang, or another exception type.
    Damage that cannot make another valid program (truncated or swapped arrays, out-of-range or negative
    fields that are not data, meta sizes) is refused or gives exactly the original outputs."""
    base = _arrays(saved)
    mutator = Mutator(base, FUZZ_SEED)
    rng = np.random.default_rng(FUZZ_SEED + 1)
    _write(tmp_path / "original.npz", base)
    np.save(tmp_path / "x.npy", x)
    cases = []
    for i in range(FUZZ_CASES):
        arrays, kind, expect = mutator.case()
        _write_case(tmp_path / f"{i}.npz", arrays, rng)
        cases.append((kind, expect))
    outcomes = _run_worker(tmp_path, FUZZ_CASES)
    problems = []
    for i, (kind, expect) in enumerate(cases):
        status = outcomes[i]
        if status == "refused" or status == "same" or (status == "diff" and expect == "any"):
            continue
        problems.append(f"case {i} ({kind}, expect {expect}): {status}")
    counts = {s: sum(1 for o in outcomes.values() if o.split()[0] == s) for s in ("refused", "same", "diff")}
    print(f"fuzz: {FUZZ_CASES} cases, {counts}")
    assert not problems, "\n".join(problems[:30])
    assert counts["refused"] > FUZZ_CASES // 4 and counts["same"] > 10   # (the mutations reach both sides)
