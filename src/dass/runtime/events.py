"""TensorBoard event files of a run: every record of ``log.jsonl`` also lands in ``RUN_DIR/events/``.

Per record (one per epoch, all phases on one step axis: the step is the record's number in the log, 1-based):

* every numeric value as a scalar tagged by its key (``train_loss``, ``density``; nested dicts flattened as
  ``lr/weight``), except the bookkeeping keys ``epoch`` and ``epochs``;
* ``phase``: text such as ``warmup, epoch 3/10``;
* ``alphas/normal``, ``alphas/reduce``: softmax(alpha) as a heat map image, one row per edge, one column per op;
* ``genotype``: the current genotype as text.

Events are written synchronously and flushed (fsync) after every record, so a killed run leaves readable events
up to its last record. Every file starts with a ``SessionLog.START`` at its first step; :meth:`EventLog.purge_from`
starts a new file, whose START TensorBoard's python loader reads as a restart ("forget the events from this step
on"; its fast loader drops the older points once a step is written again): a resumed run that writes its last
epochs again shows them once.
The writer never breaks a run: its first failure (missing package, full disk) logs one warning and turns it off.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)

FOLDER = "events"
NOT_SCALARS = frozenset({"phase", "epoch", "epochs", "alphas", "genotype"})
# viridis at 0, 1/4, 1/2, 3/4, 1 (enough for a heat map without importing matplotlib)
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)


def flatten_scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The record's numeric values by tag: nested dicts joined with ``/``; strings, lists and bools left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not prefix and key in NOT_SCALARS:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


def alpha_heatmap(weights: Any, cell: int = 16) -> np.ndarray:
    """An RGB ``uint8`` image (edges x ops, ``cell`` pixels a square) of one cell type's softmax(alpha).

    Colours run from dark (0) to yellow (the largest weight in the matrix), so the leading op of every edge
    stands out even while the weights are still close to uniform."""
    a = np.nan_to_num(np.asarray(weights, dtype=float))
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"alphas must be a non-empty edges x ops matrix, got shape {a.shape}")
    top = a.max()
    x = np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)
    pos = x * (len(_RAMP) - 1)
    knots = np.arange(len(_RAMP))
    rgb = np.stack([np.interp(pos, knots, _RAMP[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def _code_block(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())   # markdown: shown verbatim


def record_summaries(record: dict[str, Any]) -> Iterator[Any]:
    """The tensorboardX ``Summary`` protos of one log record."""
    from tensorboardX import summary

    for tag, value in flatten_scalars(record).items():
        yield summary.scalar(tag, value)
    if "phase" in record:
        where = f"{record['phase']}"
        if "epoch" in record:
            where += f", epoch {record['epoch']}" + (f"/{record['epochs']}" if "epochs" in record else "")
        yield summary.text("phase", where)
    alphas = record.get("alphas")
    if isinstance(alphas, dict):
        for cell_type, weights in alphas.items():
            try:
                image = alpha_heatmap(weights)
            except (TypeError, ValueError):   # not an edges x ops matrix (another search space): no heat map
                continue
            yield summary.image(f"alphas/{cell_type}", image, dataformats="HWC")
    if record.get("genotype") is not None:
        genotype = record["genotype"]
        lines = ([f"{key}: {json.dumps(value, default=str)}" for key, value in genotype.items()]
                 if isinstance(genotype, dict) else [json.dumps(genotype, default=str)])
        yield summary.text("genotype", _code_block("\n".join(lines)))


def _close_quietly(writer: Any) -> None:
    try:
        writer.close()
    except Exception:   # noqa: BLE001 - closing after a failure (full disk) must not raise either
        pass


class EventLog:
    """TensorBoard event files in ``folder``, written from log records; never raises.

    One file at a time, opened at the first record (or at :meth:`purge_from`). After a failure the log turns
    itself off for good (one warning), and the run carries on with its JSON log only."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.failed = False
        self._writer: Any = None
        self._finalizer: weakref.finalize | None = None

    def write(self, record: dict[str, Any], step: int) -> bool:
        """Write ``record`` at ``step`` and flush; False if the events are off."""
        if self.failed:
            return False
        try:
            from tensorboardX.proto.event_pb2 import Event

            writer = self._open(step)
            wall_time = time.time()
            for summary in record_summaries(record):
                writer.write_event(Event(wall_time=wall_time, step=step, summary=summary))
            writer.flush()
            return True
        except Exception as exc:   # noqa: BLE001 - the events are a convenience: never stop a run for them
            self._fail(exc)
            return False

    def purge_from(self, step: int) -> None:
        """Start a new file telling TensorBoard to drop the events at ``step`` and later (written again next)."""
        if self.failed:
            return
        try:
            self.close()
            self._open(step).flush()
        except Exception as exc:   # noqa: BLE001
            self._fail(exc)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()   # closes the file once, also at exit or when this object is collected
        self._writer = self._finalizer = None

    def _open(self, step: int) -> Any:
        """The open file; a new one starts with a ``SessionLog.START`` at ``step``: TensorBoard's python loader
        takes the first as the run's start and every later one as a restart that drops the steps from there on."""
        if self._writer is None:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog

            self.folder.mkdir(parents=True, exist_ok=True)
            # events.out.tfevents.SECONDS.HOST.NNNN.PID: TensorBoard reads the files in name order, so a file
            # opened in the same second as the one before (a quick resume) still comes after it
            n = sum(1 for _ in self.folder.glob("events.out.tfevents.*"))
            self._writer = EventsWriter(str(self.folder / "events"), f".{n:04d}.{os.getpid()}")
            self._finalizer = weakref.finalize(self, _close_quietly, self._writer)
            self._writer.write_event(Event(wall_time=time.time(), step=step,
                                           session_log=SessionLog(status=SessionLog.START)))
        return self._writer

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        if self._finalizer is not None:
            self._finalizer()
        self._writer = self._finalizer = None
        log.warning("dass: TensorBoard events in %s are off for this run (%s: %s); log.jsonl is written as before",
                    self.folder, type(exc).__name__, exc)


def read_events(folder: str | Path) -> list[Any]:
    """Every event in ``folder``'s event files, in the order TensorBoard reads them (a torn tail is skipped)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):   # u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack_from("<Q", data, pos)
            end = pos + 12 + length + 4
            if end > len(data):
                break
            events.append(Event.FromString(data[pos + 12:pos + 12 + length]))
            pos = end
    return events
