"""`dass nb201 lookup`: recorded accuracies from a table the user has (none ships with dass)."""

import pytest

from dass.benchmarks import lookup
from dass.cli import main
from dass.errors import DassError

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "nb201.csv"
    path.write_text("arch_str,cifar10_test,cifar100_test,note\n"
                    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,10.0,1.0,empty\n"
                    f"{ARCH},93.5,70.25,x\n")
    return path


def test_lookup_by_string_in_any_input_order(table):
    assert lookup(ARCH, table) == {"cifar10_test": 93.5, "cifar100_test": 70.25}
    shuffled = "|nor_conv_3x3~0|+|nor_conv_1x1~1|nor_conv_3x3~0|+|avg_pool_3x3~2|skip_connect~0|nor_conv_3x3~1|"
    assert lookup(shuffled, table)["cifar10_test"] == 93.5


def test_cli_prints_the_numbers(table, capsys):
    assert main(["nb201", "lookup", ARCH, "--table", str(table)]) == 0
    out = capsys.readouterr().out
    assert "cifar10_test: 93.5" in out and "cifar100_test: 70.25" in out


@pytest.mark.parametrize("arch, text, message", [
    (ARCH.replace("avg_pool_3x3~2", "nor_conv_1x1~2"), None, "is not in"),
    (ARCH, "name,acc\nx,1\n", "no arch_str column"),
    ("|conv_9x9~0|+|", None, ""),
])
def test_clear_errors(tmp_path, table, capsys, arch, text, message):
    path = table
    if text is not None:
        path = tmp_path / "other.csv"
        path.write_text(text)
    assert main(["nb201", "lookup", arch, "--table", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dass: error: ") and message in err and err.count("\n") == 1


def test_no_table_and_no_api(tmp_path):
    with pytest.raises(DassError, match="no benchmark table"):
        lookup(ARCH, tmp_path / "missing.csv")
    pth = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    pth.write_bytes(b"\x00")
    with pytest.raises(DassError, match="needs its API package"):
        lookup(ARCH, pth)
