"""``dass nb201 lookup``: the recorded accuracies of an NAS-Bench-201 architecture, from a table the user has.

Two sources: a CSV with an ``arch_str`` column and numeric columns (any names, e.g. ``cifar10_test``), or the
benchmark's own file read through its API package (``nas_201_api`` or ``nats_bench``) when it is installed.
The architecture string may be given in any input order; it is normalised first, so that it matches the
benchmark's spelling.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..errors import DassError
from ..space.nb201 import NB201Genotype

API_DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")


def lookup(arch: str | NB201Genotype, table: str | Path) -> dict[str, float]:
    """The table's numbers for ``arch`` (normalised): CSV columns, or test/valid accuracies from the API file."""
    genotype = arch if isinstance(arch, NB201Genotype) else NB201Genotype.from_arch_string(arch)
    key = genotype.to_arch_string()
    path = Path(table).expanduser()
    if not path.is_file():
        raise DassError(f"no benchmark table at {path}; pass a CSV with an arch_str column, or the NAS-Bench-201 "
                        "file with its API package installed")
    if path.suffix.lower() == ".csv":
        return _from_csv(key, path)
    return _from_api(key, path)


def _normalised(text: str) -> str | None:
    try:
        return NB201Genotype.from_arch_string(text).to_arch_string()
    except DassError:
        return None


def _from_csv(key: str, path: Path) -> dict[str, float]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "arch_str" not in reader.fieldnames:
                raise DassError(f"{path} has no arch_str column (columns: {', '.join(reader.fieldnames or [])})")
            for row in reader:
                if _normalised(row["arch_str"] or "") == key:
                    return {name: float(value) for name, value in row.items()
                            if name != "arch_str" and _number(value)}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DassError(f"cannot read {path} as a CSV table ({exc})") from None
    raise DassError(f"{key} is not in {path}")


def _number(value: str | None) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except ValueError:
        return False


def _from_api(key: str, path: Path) -> dict[str, float]:
    try:
        from nas_201_api import NASBench201API as API  # type: ignore[import-not-found]
    except ImportError:
        try:
            from nats_bench import create as _create  # type: ignore[import-not-found]

            def API(file: str, verbose: bool = False):   # noqa: N802 (the API's spelling)
                return _create(file, "tss", fast_mode=True, verbose=verbose)
        except ImportError:
            raise DassError(f"{path} is not a CSV, and reading the benchmark's own file needs its API package "
                            "(pip install nas-bench-201, or nats_bench); or export a CSV with an arch_str column") from None
    api = API(str(path), verbose=False)
    index = api.query_index_by_arch(key)
    if index is None or index < 0:
        raise DassError(f"{key} is not in {path}")
    out: dict[str, float] = {}
    for dataset in API_DATASETS:
        try:
            info = api.get_more_info(index, dataset, hp="200", is_random=False)
        except Exception:   # noqa: BLE001 (the API raises plain exceptions for datasets a file lacks)
            continue
        for name, value in info.items():
            if "accuracy" in name and isinstance(value, (int, float)):
                out[f"{dataset}/{name}"] = float(value)
    return out
