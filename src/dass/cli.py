"""The ``dass`` command: a thin shell over the library functions of the same names."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .deploy.defaults import DEFAULT_THREADS
from .errors import DassError, Interrupted


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file or preset name (default, cpu-small, paper); "
                                    "without it the embedded default runs")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set search.epochs.prune=5 (repeatable)")
    p.add_argument("--dataset", help="digits, cifar10, mnist, fashion_mnist, or a path to a .npz / folder")
    p.add_argument("--sparsity", type=float, help="fraction of weights removed, in (0, 1); 0.99 keeps 1%%")
    p.add_argument("--epochs", type=int, help="epochs of every phase (per-phase values live in the config)")
    p.add_argument("--init-channels", type=int)
    p.add_argument("--layers", type=int, help="number of cells")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--subset", type=int, metavar="N", help="use only the first N training images (quick trial)")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    _add_device(p)
    p.add_argument("--out", help="run directory (default runs/KIND-TIMESTAMP); must be new or empty")
    p.add_argument("--force", action="store_true",
                   help="use a non-empty --out anyway: its old contents are moved aside to OUT.replaced-TIMESTAMP")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_device(p: argparse.ArgumentParser, what: str = "models and batches") -> None:
    p.add_argument("--device", help=f"where {what} run: cpu (default), cuda, cuda:N or mps")


def _check_cpu(args: argparse.Namespace) -> None:
    """The packed sparse runtime is a CPU engine: ``--device`` may only say so."""
    from .runtime import resolve_device

    if resolve_device(args.device).type != "cpu":
        raise DassError(f"`dass {args.command}` runs the packed sparse runtime, a CPU engine; drop --device {args.device}")


def _flag_overrides(args: argparse.Namespace, section: str = "search") -> dict:
    """The common flags as a nested config dict (only the ones given); ``section``: search or train."""
    out: dict = {}

    def put(path: str, value) -> None:
        if value is None:
            return
        node = out
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    put("data.dataset", args.dataset)
    put("data.subset", args.subset)
    put(f"{section}.sparsity", args.sparsity)
    if args.epochs is not None:
        phases = ("warmup", "prune", "finetune") if section == "search" else ("pretrain", "prune", "finetune")
        put(f"{section}.epochs", {p: args.epochs for p in phases})
        if section == "search":
            put("search.single_loop_epochs", args.epochs)
    put("model.init_channels", args.init_channels)
    put("model.layers", args.layers)
    put(f"{section}.batch_size", args.batch_size)
    put("seed", args.seed)
    if section == "search":
        put("search.order", args.order)
        put("search.method", args.method)
        put("model.space", args.space)
    else:
        put("model.name", args.model)
        put("model.genotype", args.genotype)
        put("model.size", args.size)
        put("train.pruner", args.pruner)
    put("threads", args.threads)
    put("device", args.device)
    return out


RUN_FLAGS = ("config", "dataset", "sparsity", "epochs", "init_channels", "layers", "batch_size", "order", "seed",
             "subset", "out", "model", "genotype", "size", "pruner", "method", "space")
SEED_MAX = 2**32 - 1


def _refuse_flags_with_resume(args: argparse.Namespace) -> None:
    given = ([f for f in RUN_FLAGS if getattr(args, f, None) is not None] + (["set"] if args.sets else [])
             + (["force"] if args.force else []))
    if given:
        raise DassError("--resume continues a run with its saved config; drop "
                        + ", ".join("--" + g.replace("_", "-") for g in given))


def cmd_search(args: argparse.Namespace) -> int:
    from .search import make_config
    from .search.searcher import DassSearch

    if args.resume:
        _refuse_flags_with_resume(args)
        runner = DassSearch.resume(args.resume, progress=not args.quiet, device=args.device, threads=args.threads)
    else:
        config = make_config(args.config or "default", _flag_overrides(args), args.sets)
        runner = DassSearch.create(config, args.out, progress=not args.quiet, force=args.force)
    talk = runner.world.main   # under torchrun, rank 0 speaks for the job
    if talk:
        print(f"run directory: {runner.run_dir.path}", file=sys.stderr)
    result = runner.run()
    if talk:
        g = result.genotype
        print(g.to_darts_string() if hasattr(g, "to_darts_string") else g.to_arch_string())
        print(f"genotype: {result.run_dir / 'genotype.json'}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainRun, make_train_config

    if args.resume:
        _refuse_flags_with_resume(args)
        runner = TrainRun.resume(args.resume, progress=not args.quiet, device=args.device, threads=args.threads)
    else:
        overrides = _flag_overrides(args, "train")
        if args.genotype and not args.model:
            overrides.setdefault("model", {})["name"] = "genotype"
        config = make_train_config(args.config or "train-default", overrides, args.sets)
        runner = TrainRun.create(config, args.out, progress=not args.quiet, force=args.force)
    talk = runner.world.main
    if talk:
        print(f"run directory: {runner.run_dir.path}", file=sys.stderr)
    result = runner.run()
    if talk:
        print(f"test top-1 {100 * result.test_acc:.2f}%  ({result.run_dir / 'model_sparse.pt'})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import compare_table, evaluate_run

    result = evaluate_run(args.run_dir, latency=not args.no_latency, repeats=args.repeats, device=args.device)
    print(json.dumps(result, indent=2))
    print(compare_table([result]), file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation import compare_runs

    print(compare_runs(args.run_dirs))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .space import NB201Genotype, load_genotype
    from .viz import draw_genotype

    genotype = load_genotype(args.genotype)
    if isinstance(genotype, NB201Genotype):   # one fixed-DAG cell: text only, nothing to draw
        if args.format == "darts":
            raise DassError(f"{args.genotype} is an nb201 genotype; use --format nb201 or json")
        print(genotype.to_json() if args.format == "json" else genotype.describe())
        return 0
    if args.format == "nb201":
        raise DassError(f"{args.genotype} is a DARTS genotype; use --format darts or json")
    if args.format == "json":
        print(genotype.to_json())
    else:
        print(genotype.to_darts_string())
        for cell in ("normal", "reduce"):
            edges = getattr(genotype, cell)
            print(f"\n{cell} cell (concat {list(getattr(genotype, cell + '_concat'))}):")
            for k in range(0, len(edges), 2):
                pair = ", ".join(f"{op} <- {'c_{k-2}' if j == 0 else 'c_{k-1}' if j == 1 else f'node {j - 2}'}"
                                 for op, j in edges[k:k + 2])
                print(f"  node {k // 2}: {pair}")
    source = Path(args.genotype)
    png = Path(args.png) if args.png else (source.with_suffix(".png") if source.is_file() else Path(f"{args.genotype}.png"))
    if source.is_file() and png.exists() and png.resolve() == source.resolve():
        if args.png:
            raise DassError(f"--png {png} is the genotype file itself; choose another --png")
        png = source.with_name(source.name + ".cells.png")   # never draw over the input
    draw_genotype(genotype, png)
    print(f"drawing: {png}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_run

    _check_cpu(args)
    result = export_run(args.run_dir, out=args.out, onnx=args.onnx, threads=args.threads)
    print(json.dumps(result, indent=2))
    return 0


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise DassError(f"{what} must be comma-separated integers like 1,64; got {text!r}") from None
    if not values or min(values) < 1:
        raise DassError(f"{what} must be positive integers; got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from .deploy.export import bench_run, report_dict, synthetic_model
    from .deploy.speed import compare_speed

    _check_cpu(args)
    batches = _int_list(args.batch, "--batch")
    if args.rounds < 1 or args.threads < 1:
        raise DassError(f"--rounds and --threads must be at least 1, got {args.rounds} and {args.threads}")
    if (args.run_dir is None) == (args.model is None):
        raise DassError("give either a trained RUN_DIR or --model NAME --sparsity S (a synthetically pruned model)")
    if args.run_dir:
        report = bench_run(args.run_dir, batches, args.threads, args.rounds, ort=not args.no_ort)
        target = args.run_dir
    else:
        if args.sparsity is None or not 0 <= args.sparsity < 1:
            raise DassError("--model needs --sparsity in [0, 1), e.g. --sparsity 0.9")
        shape = _int_list(args.input, "--input")
        if len(shape) != 3:
            raise DassError(f"--input must be C,H,W like 3,32,32; got {args.input!r}")
        kwargs = {"width": args.width} if args.width else {}
        if args.init_channels:
            kwargs["init_channels"] = args.init_channels
        if args.layers:
            kwargs["layers"] = args.layers
        model = synthetic_model(args.model, args.sparsity, shape, **kwargs)
        report = compare_speed(model, shape, batches, args.threads, args.rounds, ort=not args.no_ort)
        target = f"{args.model} at {args.sparsity:.0%} sparsity (synthetic)"
    print(f"{target}: {report.nonzero_macs:,} nonzero multiply-adds per image, {report.threads} threads\n")
    print(report.table())
    print()
    print(report.profile_table())
    if report.large_profile:
        print()
        print(report.profile_table(large=True))
    if args.json:
        print(json.dumps(report_dict(report), indent=2))
    return 0


def cmd_profile_ops(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .search import make_config
    from .search.latency import LatencyTable, edge_op_latencies
    from .space import get_space
    from .space.mixed import MixedOp

    if args.threads < 1:
        raise DassError(f"--threads must be at least 1, got {args.threads}")
    config = make_config(args.config or "default", _flag_overrides(args), args.sets)
    dataset = load_dataset(config.data.dataset, config.data.data_dir)
    shape = (dataset.in_channels, *dataset.image_size)
    model = get_space(config.model.space).build_supernet(config.model, shape[0], dataset.num_classes, MixedOp)
    table = LatencyTable(args.threads)
    costs = edge_op_latencies(model, shape, config.search.sparsity, table)
    ops = list(config.model.ops)
    print(f"packed-runtime time per sample of each op, summed over the cells of each kind, at "
          f"{config.search.sparsity:.0%} sparsity, {args.threads} threads (ms; {table.measured} measured now, "
          f"the rest from {table.path})\n")
    print("| cell | edge | " + " | ".join(ops) + " |")
    print("|---|---|" + "---|" * len(ops))
    for kind in ("normal", "reduce"):
        for e, row in enumerate(costs[kind].tolist()):
            print(f"| {kind} | {e} | " + " | ".join(f"{1e3 * v:.3f}" for v in row) + " |")
    return 0


def cmd_nb201_lookup(args: argparse.Namespace) -> int:
    from .benchmarks import lookup

    for name, value in lookup(args.arch, args.table).items():
        print(f"{name}: {value:g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dass", description="Differentiable architecture search for sparse networks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="run a DASS search and write genotype.json")
    _add_common(p)
    p.add_argument("--order", type=int, choices=(1, 2), help="architecture gradient: 1 first, 2 second order")
    p.add_argument("--method", help="search method: darts (default), proxyless, darts-pt, darts-pt-fixed-alpha, rarts, "
                                    "sd-darts or sharp-darts (dass.search.methods.available_methods())")
    p.add_argument("--space", help="search space: darts (default; dass.space.available_spaces())")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search from its run directory")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("train", help="train a network (genotype or baseline): pretrain, prune, fine-tune")
    _add_common(p)
    p.add_argument("--model", help="resnet18, mobilenet_v2, vgg16, wrn_28_10 (and 28_4, 28_1, 34_10, 40_2), "
                                   "efficientnet_v2_s, darts_v1, darts_v2, or genotype")
    p.add_argument("--genotype", help="genotype.json from `dass search` (implies --model genotype)")
    p.add_argument("--size", choices=("tiny", "small", "medium", "large"), help="the paper's network sizes")
    p.add_argument("--pruner", help="hydra (learned scores, default) or gmp (gradual magnitude); dass.train.pruners")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted training from its run directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy, parameters, MACs, checkpoint size and latency of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1 (batch 64 uses a fifth)")
    _add_device(p, "the accuracy pass")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="a Markdown table over trained runs (evaluates those without eval.json)")
    p.add_argument("run_dirs", nargs="+")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="pack a trained run for the sparse runtime (and ONNX): model_packed.npz")
    p.add_argument("run_dir")
    p.add_argument("--out", help="packed model file (default RUN_DIR/model_packed.npz)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (BN folded) and check it")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    _add_device(p, "the packed runtime")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="dense PyTorch and ONNX Runtime vs the packed sparse runtime, side by side")
    p.add_argument("run_dir", nargs="?", help="a trained run (uses its model_packed.npz if exported)")
    p.add_argument("--model", help="instead of a run: a synthetically pruned model (resnet18, darts_v2, ...)")
    p.add_argument("--sparsity", type=float)
    p.add_argument("--width", type=float, help="width multiplier of a baseline model")
    p.add_argument("--init-channels", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--input", default="3,32,32", help="per-image input shape C,H,W (synthetic models)")
    p.add_argument("--batch", default="1,64", help="batch sizes, comma-separated")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="threads of both engines")
    _add_device(p, "the packed runtime")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (medians are reported)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out (it is timed when installed)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile-ops", help="time every candidate op of the search space in the packed runtime on "
                                           "this machine (the table search.cost=latency uses; cached)")
    p.add_argument("--config", help="search config file or preset (the supernet's sizes and ops)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    for flag in ("--dataset", "--sparsity", "--init-channels", "--layers", "--space"):
        p.add_argument(flag, type=float if flag == "--sparsity" else int if flag in ("--init-channels", "--layers")
                       else str)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="threads of the packed runtime")
    p.set_defaults(func=cmd_profile_ops, epochs=None, batch_size=None, seed=None, subset=None, order=None,
                   method=None, device=None)
    p = sub.add_parser("nb201", help="NAS-Bench-201 tools: `dass nb201 lookup ARCH --table FILE`")
    nb201 = p.add_subparsers(dest="nb201_command", required=True)
    q = nb201.add_parser("lookup", help="the recorded accuracies of an architecture, from a benchmark table you have")
    q.add_argument("arch", help="an architecture string |op~0|+|op~0|op~1|+|op~0|op~1|op~2| (any input order)")
    q.add_argument("--table", required=True, help="a CSV with an arch_str column, or the benchmark's file (needs its "
                                                  "API package)")
    q.set_defaults(func=cmd_nb201_lookup)
    p = sub.add_parser("show", help="print and draw a genotype (genotype.json, a DARTS string file, or DARTS_V2)")
    p.add_argument("genotype")
    p.add_argument("--format", choices=("darts", "json", "nb201"), default=None,
                   help="darts (DARTS genotypes' default), nb201 (NB-201's default: the architecture string), json")
    p.add_argument("--png", help="where to draw the cells (default: beside the genotype file)")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Interrupted as exc:
        print(f"dass: {exc}", file=sys.stderr)
        return 130
    except DassError as exc:
        print(f"dass: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # outside a run's loop: nothing was saved
        print("dass: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:   # the file system said no (full disk, permissions, a folder where a file was expected)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"dass: error: {exc.strerror or exc}{where}; check the path, free space and permissions", file=sys.stderr)
        return 2
    except MemoryError:
        print("dass: error: out of memory; use a smaller --batch-size, --subset or model", file=sys.stderr)
        return 2
    finally:
        from .distributed import shutdown_world

        shutdown_world()


if __name__ == "__main__":
    sys.exit(main())
