"""Bad genotypes (files, DARTS strings, JSON) give a one-line DassError, never a traceback."""

import errno
import json
import os
import re

import pytest

from dass.errors import DassError
from dass.space import DARTS_V2, Genotype
from dass.space.genotype import MAX_DARTS_CHARS, MAX_STATES

BASE = DARTS_V2.to_darts_string()   # normal_concat=[2, 3, 4, 5]


def _darts_error(text: str) -> str:
    with pytest.raises(DassError) as info:
        Genotype.from_darts_string(text)
    assert "\n" not in str(info.value)
    return str(info.value)


def _dict_error(data) -> str:
    with pytest.raises(DassError) as info:
        Genotype.from_dict(data)
    assert "\n" not in str(info.value)
    return str(info.value)


def _concat(expr: str) -> str:
    return BASE.replace("normal_concat=[2, 3, 4, 5]", f"normal_concat={expr}")


@pytest.mark.parametrize("expr, message", [
    ("range(2, 10**12)", r"unsupported expression.*10 \*\* 12"),
    ("range(2, 1000000000000)", f"has 999999999998 states; a concat list has at most {MAX_STATES}"),
    ("range(-10**30, 10**30)", "unsupported expression"),
    (f"range(-{10**30}, {10**30})", f"has too many states; a concat list has at most {MAX_STATES}"),
    (f"range({10**30})", "has too many states"),
    ("range('a')", "takes integers"),
    ("range(2.0, 6)", "takes integers"),
    ("range(True, 6)", "takes integers"),
    ("range()", r"unsupported range.*range\(start, stop\)"),
    ("range(1, 2, 3, 4)", "unsupported range"),
    ("range(2, 6, 0)", "step must not be zero"),
    ("range(stop=6)", "unsupported range"),
    ("range(range(2, 6))", "takes integers"),
    ("range(6, 2)", "normal_concat is empty"),
    ("[2.5, 3]", "integer state indices, got 2.5"),
    ("[2, None]", "integer state indices, got None"),
    ("'2345'", "must be a list, got '2345'"),
    ("{2, 3}", "must be a list"),
])
def test_bad_concat_expressions(expr, message):
    assert re.search(message, _darts_error(_concat(expr)))


def test_range_within_the_cap_is_fine():
    assert Genotype.from_darts_string(_concat("range(2, 6)")) == DARTS_V2
    assert Genotype.from_darts_string(_concat("range(5, 1, -1)")).normal_concat == (5, 4, 3, 2)


@pytest.mark.parametrize("edge, message", [
    ("('sep_conv_3x3', 1.9)", r"input must be an integer state index, got 1\.9 \(float\)"),
    ("('sep_conv_3x3', True)", r"got True \(bool\)"),
    ("('sep_conv_3x3', '1')", r"got '1' \(str\)"),
    ("('sep_conv_3x3', -1)", "reads state -1"),
    ("('sep_conv_3x3', 2)", r"edge 1 \(node 0\) reads state 2"),      # node 0 reading itself
    ("('sep_conv_3x3', 3)", "reads state 3"),                         # a later node
    ("(1, 1)", "op must be a name"),
    ("('sep_conv_3x3', 1, 2)", r"must be an \[op, input\] pair"),
    ("'sep_conv_3x3'", r"must be an \[op, input\] pair"),
])
def test_bad_edges(edge, message):
    text = BASE.replace("('sep_conv_3x3', 1)", edge, 1)   # the second edge of node 0
    assert re.search(message, _darts_error(text))


def test_reduction_cell_may_not_concatenate_its_inputs():
    text = BASE.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=[0, 2, 3, 4, 5]")
    assert "reduction cell may concatenate only its nodes" in _darts_error(text)
    # the normal cell may: its inputs have the nodes' size
    assert Genotype.from_darts_string(_concat("[0, 1, 2, 3, 4, 5]")).normal_concat[0] == 0


@pytest.mark.parametrize("text, message", [
    ("x" * 10**6, f"at most {MAX_DARTS_CHARS}"),
    ("-" * 50_000 + "1", "nested too deeply"),                         # MemoryError in the parser
    ("Genotype(normal=" + "1+" * 30_000 + "1)", "nested too deeply"),  # RecursionError in the parser
    ("Genotype(normal=" + "(" * 300 + ")" * 300 + ")", "too many nested parentheses"),
    ("Genotype(normal=" + "[" * 150 + "]" * 150 + ")", "missing field"),
    ("Genotype(normal=[], normal=[], normal_concat=[2], reduce=[], reduce_concat=[2])", "given twice"),
    ("Genotype([], [2], [], [2], [])", "at most 4 fields"),
    ("Genotype(**fields)", r"Genotype\(\*\*\.\.\.\) is not supported"),
    ("Genotype(" + "n" * 50_000 + "=[])", r"unknown Genotype field 'nnnn.*\.\.\.; expected"),
    ("Genotype([], normal=[])", "given twice"),
    ("Genotype(normal=x, normal_concat=[2], reduce=[], reduce_concat=[2])", "unsupported expression"),
    ("Genotype(", "not a DARTS genotype string"),
    ("\x00", "null bytes"),
    ("", "exactly one Genotype"),
    ("Genotype(normal=[('sep_conv_3x3', " + "9" * 5000 + ")])", "not a DARTS genotype string"),
])
def test_huge_deep_and_odd_strings(text, message):
    assert re.search(message, _darts_error(text))


def test_darts_string_must_be_text():
    assert "must be text" in _darts_error(b"Genotype()")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.__setitem__("normal", None), "'normal' must be a list, got None"),
    (lambda d: d.__setitem__("normal", 5), "'normal' must be a list, got 5"),
    (lambda d: d.__setitem__("normal", "sep_conv_3x3"), "must be a list"),
    (lambda d: d["normal"].__setitem__(0, [["sep_conv_3x3"], 0]), "op must be a name"),
    (lambda d: d["normal"].__setitem__(0, [None, 0]), "op must be a name"),
    (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3", [0]]), r"got \[0\] \(list\)"),
    (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3", None]), "got None"),
    (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3", 0.0]), r"got 0\.0 \(float\)"),
    (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3", False]), r"got False \(bool\)"),
    (lambda d: d["normal"].__setitem__(0, {"op": "sep_conv_3x3", "input": 0}), "pair"),
    (lambda d: d["normal"].__setitem__(0, "x" * 1000), r"is 'xxxx.*\.\.\.; each edge"),   # quoted, cut short
    (lambda d: d["normal"].__setitem__(0, ["x" * 10**5, 0]), r"unknown op 'xxxx.*\.\.\.; known"),
    (lambda d: d.__setitem__("reduce_concat", [[2], [3]]), "integer state indices"),
    (lambda d: d.__setitem__("reduce_concat", list(range(2, 200))), f"at most {MAX_STATES}"),
    (lambda d: d.__setitem__("normal", [["sep_conv_3x3", 0]] * 10**6), "at most"),
    (lambda d: d.__setitem__("meta", [1, 2]), "meta must be a JSON object"),
    (lambda d: d.__setitem__("meta", "abc"), "meta must be a JSON object"),
])
def test_json_with_wrong_types(mutate, message):
    data = DARTS_V2.to_dict()
    mutate(data)
    assert re.search(message, _dict_error(data))


@pytest.mark.parametrize("data", [None, [], "normal", 3, [DARTS_V2.to_dict()]])
def test_json_that_is_not_an_object(data):
    assert "must be a JSON object" in _dict_error(data)


def test_meta_null_is_empty():
    data = DARTS_V2.to_dict()
    data["meta"] = None
    assert Genotype.from_dict(data).meta == {}


# -- files --------------------------------------------------------------------------------------------------
def _load_error(path) -> str:
    with pytest.raises(DassError) as info:
        Genotype.load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_binary_files(tmp_path):
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 4)
    assert "not a text file" in _load_error(tmp_path / "random.bin")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    assert "not a text file" in _load_error(tmp_path / "x.png")
    (tmp_path / "nul.txt").write_bytes(b"Genotype(\x00)")
    assert "null bytes" in _load_error(tmp_path / "nul.txt")


def test_odd_files(tmp_path):
    assert "is a folder" in _load_error(tmp_path)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in _load_error(tmp_path / "deep.json")
    (tmp_path / "big.txt").write_text("x" * 2_000_000)
    assert "larger than" in _load_error(tmp_path / "big.txt")
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "must be a JSON object" in _load_error(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text('{"normal": ')
    assert "not valid JSON" in _load_error(tmp_path / "bad.json")
    (tmp_path / "bigint.json").write_text('{"normal": [["sep_conv_3x3", ' + "9" * 5000 + "]]}")
    assert "not valid JSON" in _load_error(tmp_path / "bigint.json")
    (tmp_path / "nan.json").write_text(json.dumps({**DARTS_V2.to_dict(), "normal_concat": [float("nan")]}))
    assert "got nan (float)" in _load_error(tmp_path / "nan.json")


def test_utf8_bom_json_loads(tmp_path):
    (tmp_path / "g.json").write_bytes(b"\xef\xbb\xbf" + DARTS_V2.to_json().encode())
    assert Genotype.load(tmp_path / "g.json") == DARTS_V2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(DARTS_V2.to_json())
    path.chmod(0)
    assert "cannot read" in _load_error(path)


# -- drawing --------------------------------------------------------------------------------------------------
def test_draw_genotype_refuses_folders_and_unwritable_paths(tmp_path, monkeypatch):
    from dass.viz import draw_genotype, plots

    with pytest.raises(DassError, match="it is a folder"):
        draw_genotype(DARTS_V2, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DassError, match="is a file, not a folder"):
        draw_genotype(DARTS_V2, tmp_path / "file" / "cells.png")
    for code in (errno.EACCES, errno.EROFS):
        def refuse(path, write, code=code):
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(plots, "atomic_write", refuse)
        with pytest.raises(DassError, match=f"cannot write .*{os.strerror(code)}"):
            draw_genotype(DARTS_V2, tmp_path / "cells.png")
    monkeypatch.undo()
    draw_genotype(DARTS_V2, tmp_path / "cells.png")
    assert (tmp_path / "cells.png").read_bytes()[:4] == b"\x89PNG"
