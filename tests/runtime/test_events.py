"""Every record of log.jsonl also lands in events/ as TensorBoard events; a resume does not show epochs twice;
a failing event writer never breaks the JSON log."""

import json
import logging
import os
import sys

import numpy as np
import pytest

from dass.runtime.events import EventLog, alpha_heatmap, flatten_scalars, read_events
from dass.runtime.rundir import RunDir

pytest.importorskip("tensorboardX")
from tensorboardX.proto.event_pb2 import SessionLog  # noqa: E402

EDGES, OPS = 14, 8


def search_record(phase, epoch, epochs, loss, with_val=True):
    normal = np.full((EDGES, OPS), 1 / OPS)
    normal[:, 3] += 0.1
    record = {"phase": phase, "epoch": epoch, "epochs": epochs, "train_loss": loss, "train_acc": 0.5,
              "arch_val_loss": loss + 0.1, "lr": {"weight": 0.025, "arch": 3e-4}, "density": 0.9}
    if with_val:
        record["val_loss"], record["val_acc"] = loss + 0.2, 0.4
    record.update({"expected_cost_macs": 1.5e6,
                   "alphas": {"normal": (normal / normal.sum(1, keepdims=True)).tolist(),
                              "reduce": np.full((EDGES, OPS), 1 / OPS).tolist()},
                   "genotype": {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2],
                                "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]},
                   "seconds_per_step": 0.01})
    return record


def train_record(phase, epoch, epochs, loss):
    return {"phase": phase, "epoch": epoch, "epochs": epochs, "train_loss": loss, "train_acc": 0.6,
            "test_loss": loss + 0.3, "test_acc": 0.55, "density": 0.5, "lr": 0.1, "seconds_per_step": 0.02}


def shown_scalars(folder):
    """The points TensorBoard shows per tag, as (step, value) in reading order: a SessionLog.START at step s
    drops the points at s and later read before it (what the python loader does; the fast loader drops them
    when step s comes again)."""
    shown = {}
    for event in read_events(folder):
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            shown = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in shown.items()}
        for value in event.summary.value:
            if value.HasField("simple_value"):
                shown.setdefault(value.tag, []).append((event.step, value.simple_value))
    return shown


def texts(folder, tag):
    return {e.step: v.tensor.string_val[0].decode() for e in read_events(folder)
            for v in e.summary.value if v.tag == tag}


def test_search_records_become_scalars_heat_maps_and_text(tmp_path):
    run = RunDir(tmp_path)
    records = [search_record("warmup", 1, 2, 2.0), search_record("warmup", 2, 2, 1.5),
               search_record("prune", 1, 1, 1.2, with_val=False)]
    for r in records:
        run.log(r)   # the file is flushed after each record: read it back while the writer is still open
    shown = shown_scalars(run.file(RunDir.EVENTS))
    assert set(shown) == {"train_loss", "train_acc", "arch_val_loss", "lr/weight", "lr/arch", "density",
                          "val_loss", "val_acc", "expected_cost_macs", "seconds_per_step"}
    assert shown["train_loss"] == [(1, 2.0), (2, 1.5), (3, pytest.approx(1.2))]   # phases share the step axis
    assert shown["val_acc"] == [(1, pytest.approx(0.4)), (2, pytest.approx(0.4))]
    assert shown["lr/arch"][0] == (1, pytest.approx(3e-4))
    assert texts(run.file(RunDir.EVENTS), "phase/text_summary") == {1: "warmup, epoch 1/2", 2: "warmup, epoch 2/2",
                                                                      3: "prune, epoch 1/1"}
    genotype = texts(run.file(RunDir.EVENTS), "genotype/text_summary")
    assert sorted(genotype) == [1, 2, 3]
    assert genotype[3].splitlines()[0] == '    normal: [["sep_conv_3x3", 0], ["skip_connect", 1]]'   # a code block
    images = [(e.step, v.tag, v.image) for e in read_events(run.file(RunDir.EVENTS)) for v in e.summary.value
              if v.HasField("image")]
    assert [(s, t) for s, t, _ in images] == [(s, t) for s in (1, 2, 3) for t in ("alphas/normal", "alphas/reduce")]
    image = images[0][2]
    assert (image.height, image.width, image.colorspace) == (EDGES * 16, OPS * 16, 3)
    assert image.encoded_image_string.startswith(b"\x89PNG")
    assert run.log_records() == records


def test_train_records_use_a_plain_lr(tmp_path):
    run = RunDir(tmp_path)
    for i, phase in enumerate(["pretrain", "prune", "finetune"]):
        run.log(train_record(phase, 1, 1, 1.0 - 0.1 * i))
    shown = shown_scalars(run.file(RunDir.EVENTS))
    assert set(shown) == {"train_loss", "train_acc", "test_loss", "test_acc", "density", "lr", "seconds_per_step"}
    assert [s for s, _ in shown["test_acc"]] == [1, 2, 3]


def test_resume_rewrites_epochs_without_duplicates(tmp_path):
    run = RunDir(tmp_path)
    for epoch in range(1, 5):
        run.log(train_record("pretrain", epoch, 4, 10.0 + epoch))
    resumed = RunDir(tmp_path)   # a new process: the checkpoint was written after record 2
    resumed.truncate_log(2)
    for epoch in (3, 4):
        resumed.log(train_record("pretrain", epoch, 4, 20.0 + epoch))
    assert shown_scalars(tmp_path / "events")["train_loss"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    # once more, now with a torn last line (killed mid-append): dropped, and its events purged
    with open(resumed.file(RunDir.LOG), "a") as fh:
        fh.write('{"phase": "pre')
    again = RunDir(tmp_path)
    again.log(train_record("pretrain", 5, 5, 25.0))
    assert shown_scalars(tmp_path / "events")["train_loss"][-2:] == [(4, 24.0), (5, 25.0)]
    assert len(again.log_records()) == 5


def test_resuming_a_run_without_events_writes_its_earlier_records_first(tmp_path):
    lines = [train_record("pretrain", epoch, 3, float(epoch)) for epoch in (1, 2, 3)]
    (tmp_path / RunDir.LOG).write_text("".join(json.dumps(r) + "\n" for r in lines))   # an older dass's log
    run = RunDir(tmp_path)
    run.truncate_log(2)
    run.log(train_record("pretrain", 3, 3, 30.0))
    assert shown_scalars(tmp_path / "events")["train_loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_tensorboard_itself_reads_the_purged_events(tmp_path):
    """Only where the tensorboard package is installed (not a dependency): its loader shows each step once."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.plugin_event_accumulator")
    from tensorboard.util import tensor_util

    run = RunDir(tmp_path)
    for epoch in range(1, 4):
        run.log(search_record("warmup", epoch, 3, float(epoch)))
    resumed = RunDir(tmp_path)
    resumed.truncate_log(1)
    for epoch in (2, 3):
        resumed.log(search_record("warmup", epoch, 3, 10.0 + epoch))
    acc = accumulator.EventAccumulator(str(tmp_path / "events"), size_guidance={"tensors": 0})
    acc.Reload()
    loss = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors("train_loss")]
    assert loss == [(1, 1.0), (2, 12.0), (3, 13.0)]
    for tag in ("alphas/normal", "alphas/reduce", "genotype/text_summary", "phase/text_summary", "lr/weight"):
        assert [e.step for e in acc.Tensors(tag)] == [1, 2, 3], tag


@pytest.mark.parametrize("failure", ["no_package", "folder_is_a_file", "disk_full"])
def test_a_failing_writer_warns_once_and_the_json_log_goes_on(tmp_path, monkeypatch, caplog, failure):
    if failure == "no_package":
        for name in [n for n in sys.modules if n.split(".")[0] == "tensorboardX"]:
            monkeypatch.setitem(sys.modules, name, None)   # import tensorboardX... raises ImportError
    elif failure == "folder_is_a_file":
        (tmp_path / RunDir.EVENTS).write_text("")
    run = RunDir(tmp_path)
    if failure == "disk_full":
        run.log(train_record("pretrain", 1, 3, 1.0))
        from tensorboardX.event_file_writer import EventsWriter

        def full(self, event):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(EventsWriter, "write_event", full)
    with caplog.at_level(logging.WARNING, logger="dass.runtime.events"):
        for epoch in range(len(run.log_records()) + 1, 4):
            run.log(train_record("pretrain", epoch, 3, 1.0))
        run.truncate_log(2)
        run.log(train_record("pretrain", 3, 3, 1.0))
    warnings = [r for r in caplog.records if "TensorBoard events" in r.getMessage()]
    assert len(warnings) == 1 and "log.jsonl is written as before" in warnings[0].getMessage()
    assert [r["epoch"] for r in run.log_records()] == [1, 2, 3]
    assert run.events().failed


def test_flatten_scalars_and_heat_map():
    assert flatten_scalars({"phase": "x", "epoch": 1, "epochs": 2, "lr": {"w": 1, "a": {"b": 2}}, "ok": True,
                            "val_acc": None, "alphas": {"normal": [[1.0]]}, "n": 3}) == {"lr/w": 1.0, "lr/a/b": 2.0,
                                                                                        "n": 3.0}
    image = alpha_heatmap([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], cell=4)
    assert image.shape == (8, 12, 3) and image.dtype == np.uint8
    brightness = image[::4, ::4].astype(int).sum(-1)
    assert brightness.argmax() == 1 and brightness[0].argmax() == 1 and brightness[1].argmax() == 0
    with pytest.raises(ValueError):
        alpha_heatmap([1.0, 2.0])


def test_alphas_that_are_no_matrix_get_no_heat_map_but_the_rest_is_written(tmp_path):
    events = EventLog(tmp_path)
    assert events.write({"train_loss": 1.0, "alphas": {"normal": [[0.5, 0.5], [1.0]], "reduce": [[0.2, 0.8]]}}, 1)
    tags = [v.tag for e in read_events(tmp_path) for v in e.summary.value]
    assert tags == ["train_loss", "alphas/reduce"] and not events.failed


def test_event_log_closes_and_reopens_in_name_order(tmp_path):
    events = EventLog(tmp_path)
    events.write({"x": 1.0}, step=1)
    events.purge_from(2)
    events.write({"x": 2.0}, step=2)
    events.close()
    events.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0].endswith(f".0000.{os.getpid()}") and names[1].endswith(f".0001.{os.getpid()}")
    assert shown_scalars(tmp_path)["x"] == [(1, 1.0), (2, 2.0)]
