"""A run directory belongs to one run: refusing non-empty folders, moving aside, the log's torn last line."""

import json
import os

import pytest

from dass.errors import DassError
from dass.runtime.rundir import RunDir, check_run_dir, config_hash, new_run_dir, remove_stale_temporaries


def test_new_folder_and_empty_folder_are_taken(tmp_path):
    assert new_run_dir(tmp_path / "a" / "b", "search").is_dir()
    (tmp_path / "empty").mkdir()
    assert new_run_dir(tmp_path / "empty", "search") == tmp_path / "empty"


def test_non_empty_folder_is_refused_and_force_moves_it_aside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("mine: 1\n")
    with pytest.raises(DassError, match="is not empty.*--force"):
        check_run_dir(out, "train")
    path = new_run_dir(out, "train", force=True)
    assert path == out and list(out.iterdir()) == []
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("out.replaced-")]
    assert len(moved) == 1 and (moved[0] / "config.yaml").read_text() == "mine: 1\n"


@pytest.mark.parametrize("make", ["file", "under_file"])
def test_out_at_or_under_a_file_is_refused(tmp_path, make):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if make == "file" else tmp_path / "f" / "run"
    with pytest.raises(DassError, match="is a file, not a folder"):
        check_run_dir(out, "search")


def test_read_only_target_is_refused_before_any_work(tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    with pytest.raises(DassError, match="read-only file system"):
        check_run_dir(tmp_path / "run", "search")


def test_default_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = new_run_dir(None, "search")
    (first / "x").write_text("")
    second = new_run_dir(None, "search")
    assert first != second and second.is_dir()


def test_torn_last_log_line_is_ignored_and_replaced(tmp_path):
    run = RunDir(tmp_path)
    run.log({"epoch": 1})
    with open(run.file(RunDir.LOG), "a") as fh:
        fh.write('{"epoch": 2, "tr')   # a kill during the append
    assert run.log_records() == [{"epoch": 1}]
    run.log({"epoch": 2})
    assert run.log_records() == [{"epoch": 1}, {"epoch": 2}]
    assert run.file(RunDir.LOG).read_text().count("\n") == 2


def test_damaged_middle_line_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    run.file(RunDir.LOG).write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(DassError, match="line 2 is damaged"):
        run.log_records()


def test_manifest_and_config_hash(tmp_path):
    run = RunDir(tmp_path)
    manifest = run.write_manifest("search", {"seed": 1, "a": {"b": 2}})
    assert run.manifest() == manifest
    assert manifest["config_hash"] == config_hash({"a": {"b": 2}, "seed": 1})
    assert manifest["config_hash"] != config_hash({"a": {"b": 3}, "seed": 1})
    run.file("run.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DassError, match="not a dass run manifest"):
        run.manifest()


def test_stale_temporaries_of_atomic_writes_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"")
    (tmp_path / ".hidden.tmp").write_text("a user's file")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp"]
