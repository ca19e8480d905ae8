"""``tritter-compress``: compresses every new checkpoint to ``.safetensors.tzst``, then prunes.

An ordinary subscriber, like ``tritter-record``: its cursor (the last seq it has handled) is
``HOME/compress.cursor``, one instance per home holds ``HOME/compress.lock``.  For each
``checkpoint`` event it

1. compresses ``runs/<id>/<path>`` next to itself — as a delta of the run's previous checkpoint
   when that one is of the same stage and the chain is shorter than ``--keyframe-every``,
   otherwise as a full keyframe (always for a stage-final checkpoint, reason ``stage``); a
   delta larger than ``DELTA_PAYS`` (90%) of its chain's keyframe is rewritten as a keyframe;
2. writes it as ``<name>.tzst.tmp``, fsyncs, reads it back and decodes every segment against
   the xxh3 of the original's bytes, and only then renames it into place and removes the raw
   file;
3. with ``--keep-last N`` only, prunes the run's compressed checkpoints: the newest N, every
   stage-final one and the run's newest checkpoint are kept, plus whatever delta bases those
   need; the others are deleted.  Raw files are never deleted by it.  By default the sink
   deletes nothing: retention is the run's ``--keep-checkpoints`` (``daemon/engine/retention.py``),
   which the daemon applies to both forms and which also keeps the best-eval checkpoint — a
   second policy here would delete what that one promises to keep.

Everything it does is decided from the files, so a ``kill -9`` at any point loses nothing: a
half-written output is a ``.tmp`` file, discarded and redone from the raw file, and an output
already in place whose original sha256 matches the event is not redone (the raw file, if
still there, is just removed).

Memory is bounded: the raw file is hashed and compressed range by range, and a delta's base is
decoded frame by frame from its ``.tzst`` chain, so the sink holds a few 8 MiB frames per
thread, never a whole checkpoint (nor the previous one).
"""

from __future__ import annotations

from tritter.clients.sink_signals import stop_quietly_while_starting

# First of all, before the imports below: run as a program, a SIGTERM/SIGINT from here on exits 0
# (docs/operations.md, "Exit status").
stop_quietly_while_starting(__name__, "tritter-compress")

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritter.protocol.cli_args import bounded_int
from tritter.clients.sink_base import Sink, SinkSettings, finish_in_thread, sink_main, sink_parser
from tritter.clients.target import Target
from tritter.formats import codec
from tritter.formats.checkpoints import RAW_SUFFIX, SUFFIX, checkpoint_step, is_compressed, list_checkpoint_files
from tritter.formats.files import file_sha256, fsync_dir
from tritter.protocol.events import AnyEvent, CheckpointEvent
from tritter.protocol.home import Layout

log = logging.getLogger("tritter-compress")

DEFAULT_KEEP_LAST: int | None = None  # no pruning by the sink: the run's --keep-checkpoints decides
DEFAULT_KEYFRAME_EVERY = 8
DELTA_PAYS = 0.9  # a delta over 90% of its keyframe's size is rewritten as a keyframe


@dataclass(frozen=True)
class CompressSettings(SinkSettings):
    """``tritter-compress`` options.

    ``keep_last``: the newest compressed checkpoints kept per run, stage-final ones always (>= 0), None to
    prune nothing (retention left to the run's ``--keep-checkpoints``);
    ``keyframe_every``: a full keyframe at least every K checkpoints (>= 1; 1 = no deltas);
    ``threads``: compression threads (None = up to 4).  ValueError (one line) otherwise.
    """

    keep_last: int | None = DEFAULT_KEEP_LAST
    keyframe_every: int = DEFAULT_KEYFRAME_EVERY
    threads: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.keep_last is not None and self.keep_last < 0) or self.keyframe_every < 1:
            raise ValueError("--keep-last must be >= 0 and --keyframe-every >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be >= 1")


class Compressor(Sink[CompressSettings]):
    """The compressor sink (see the module docstring); ``handle`` also drives it by hand in tests."""

    name = "tritter-compress"
    lock_file = "compress.lock"
    cursor_file = "compress.cursor"
    redo_note = "finished work is not redone"
    settings_type = CompressSettings

    def __init__(self, layout: Layout, settings: CompressSettings | None = None, source: Target | None = None) -> None:
        super().__init__(layout, settings, source)
        self.compressed = 0  # outputs written by this process (for logs and tests)


    def describe(self) -> str:
        """The start-up log line: the runs folder and the retention/keyframe settings."""
        keep = ("deleting nothing: retention is each run's --keep-checkpoints" if self.settings.keep_last is None
                else f"keep last {self.settings.keep_last}")
        return f"compressing checkpoints under {self.layout.runs} ({keep}, keyframe every {self.settings.keyframe_every})"

    # -- events ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Remove temp outputs a killed compressor left (``sweep``, in a thread)."""
        await finish_in_thread(self.sweep)

    async def on_event(self, event: AnyEvent) -> None:
        """A ``checkpoint`` event is compressed in a worker thread (the loop and signals stay responsive);
        a signal meanwhile stops the sink once that checkpoint is done (``finish_in_thread``)."""
        if isinstance(event, CheckpointEvent):
            await finish_in_thread(self.handle, event)

    def save_due(self, event: AnyEvent) -> bool:
        """Save after every checkpoint event (its output is done), otherwise on the base's time schedule."""
        return isinstance(event, CheckpointEvent) or super().save_due(event)

    def handle(self, event: AnyEvent) -> None:
        """Handle one event synchronously (blocking): compress and prune for a checkpoint, then
        move the cursor and save it when due.  Errors are logged, never raised: the raw file stays.
        A ``deleted`` checkpoint event (the run's retention removed a file) has nothing to compress."""
        if isinstance(event, CheckpointEvent) and event.status == "saved":
            try:
                self.process(event)
                self.retain(event.run_id)  # prunes only with --keep-last
            except (codec.CodecError, OSError) as exc:
                log.error("run %s step %d: %s (raw file kept)", event.run_id, event.step, exc)
            except Exception:  # a sink keeps going: the raw file stays, the next event is handled
                log.exception("run %s step %d: unexpected error (raw file kept)", event.run_id, event.step)
        self.cursor = event.seq
        if self.save_due(event):
            self.save_if_moved()

    def sweep(self) -> None:
        """Remove temp outputs left by a killed compressor (they are redone from the raw files)."""
        if not self.layout.runs.is_dir():
            return
        for tmp in self.layout.runs.glob(f"*/checkpoints/*{SUFFIX}{codec.TMP_SUFFIX}"):
            log.info("discarding half-written %s", tmp)
            tmp.unlink(missing_ok=True)

    # -- one checkpoint -------------------------------------------------------------------------
    def _paths(self, event: CheckpointEvent) -> tuple[Path, Path]:
        run_dir = self.layout.run_dir(event.run_id).resolve()
        raw = (run_dir / event.path).resolve()
        if run_dir not in raw.parents or not raw.name.endswith(RAW_SUFFIX):
            raise codec.CodecError(f"checkpoint path {event.path!r} is not a .safetensors file inside the run folder")
        return raw, raw.with_name(raw.name + SUFFIX)

    def process(self, event: CheckpointEvent) -> str:
        """Compress one checkpoint; returns what happened: compressed, done, gone."""
        raw, out = self._paths(event)
        codec.tmp_path(out).unlink(missing_ok=True)
        if out.exists():
            try:
                done = codec.read_header(out)["original"]["sha256"] == event.sha256
            except codec.CodecError as exc:
                log.warning("%s", exc)
                done = False
            if done:
                # Killed between the rename and the unlink: the output is whole and was verified.
                # The raw file goes only if it is still that checkpoint (not a rewrite of the step).
                if raw.exists() and file_sha256(raw) == event.sha256:
                    raw.unlink()
                    fsync_dir(raw.parent)
                    log.info("run %s: %s: already compressed; removed the raw file", event.run_id, out.name)
                return "done"
        try:
            before = os.stat(raw)
        except FileNotFoundError:
            log.info("run %s: %s is gone; nothing to compress", event.run_id, event.path)
            return "gone"
        sha = file_sha256(raw)  # streamed: the sink never holds a whole checkpoint (16 GB at 1b)
        if sha != event.sha256:
            # The step was saved again (e.g. periodic, then stage-final): its own event follows.
            log.info("run %s: %s was rewritten after step %d's %s event; leaving it for the later event", event.run_id, raw.name, event.step, event.reason)
            return "superseded"
        base, why = self._choose_base(event, raw)
        meta = {"run_id": event.run_id, "step": event.step, "stage": event.stage, "reason": event.reason, "seq": event.seq}
        t0 = time.monotonic()

        def compress(base: Path | None) -> dict[str, Any]:
            # Tensor by tensor: the raw file and the base (decoded frame by frame) are read by range.
            return codec.compress_file(raw, out, base=base, meta=meta, threads=self.settings.threads, sha256=sha)

        try:
            header = compress(base)
        except codec.CodecError as exc:
            if base is None:
                raise
            # Most likely the base does not decode to what its index promises (damaged on disk):
            # a keyframe does not need it (and fails the same way if the raw file is the problem).
            log.warning("run %s: %s: no delta (%s); writing a keyframe", event.run_id, out.name, exc)
            base, why = None, "the delta base is unusable"
            header = compress(None)
        if base is not None and not self._delta_pays(out, base):
            why = f"a delta was {out.stat().st_size / 1e6:.2f} MB, over {DELTA_PAYS:.0%} of the last keyframe"
            header = compress(None)
        self.compressed += 1
        after = os.stat(raw)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
            log.info("run %s: %s was rewritten while being compressed; keeping it for its own event", event.run_id, raw.name)
            return "compressed"
        raw.unlink()
        fsync_dir(raw.parent)
        packed = out.stat().st_size
        kind = f"delta of {header['base']['name']}, chain {header['chain']}" if header.get("base") else f"keyframe ({why})"
        log.info("run %s: compressed %s: %.2f MB -> %.2f MB (%.3fx, %s) in %.1f s", event.run_id, out.name, after.st_size / 1e6,
                 packed / 1e6, after.st_size / packed, kind, time.monotonic() - t0)
        return "compressed"

    def _choose_base(self, event: CheckpointEvent, raw: Path) -> tuple[Path | None, str]:
        """(the delta base for this checkpoint or None, why it is a keyframe when None)."""
        if event.reason == "stage":
            return None, "stage-final"
        if self.settings.keyframe_every <= 1:
            return None, "--keyframe-every 1"
        prev = [p for p in list_checkpoint_files(raw.parent.parent) if (checkpoint_step(p) or 0) < event.step]
        if not prev:
            return None, "first checkpoint"
        base = prev[-1]
        if not is_compressed(base):
            compressed = base.with_name(base.name + SUFFIX)
            if not compressed.exists():
                return None, f"previous checkpoint {base.name} is not compressed yet"
            base = compressed
        try:
            header = codec.read_header(base)
        except codec.CodecError as exc:
            log.warning("%s", exc)
            return None, "previous checkpoint unreadable"
        if header.get("meta", {}).get("stage") != event.stage:
            return None, "new stage"
        if int(header.get("chain", 0)) + 1 >= self.settings.keyframe_every:
            return None, f"every {self.settings.keyframe_every}"
        try:
            codec.base_chain(base)  # every link present and matching; the codec reads the base tensor by tensor
        except codec.CodecError as exc:
            log.warning("%s", exc)
            return None, "previous checkpoint unreadable"
        return base, ""

    @staticmethod
    def _delta_pays(out: Path, base: Path) -> bool:
        """True when the delta just written is at most ``DELTA_PAYS`` of its chain's keyframe (by size on disk).

        Measured, not guessed: early in training (large updates) or for tensors that moved a
        lot, XOR deltas stop paying, and a chain link that saves little still costs a decode on
        resume.  The keyframe stands in for this checkpoint's own full size (same model, same
        statistics); with a raw base there is nothing to compare and the delta is kept.
        """
        try:
            keyframe = codec.base_chain(base)[0]
        except codec.CodecError:
            return True
        if not is_compressed(keyframe):
            return True
        return out.stat().st_size <= DELTA_PAYS * keyframe.stat().st_size

    # -- retention ------------------------------------------------------------------------------
    def retain(self, run_id: str) -> list[Path]:
        """Delete the run's compressed checkpoints that ``--keep-last`` does not keep; returns them
        (none without ``--keep-last``)."""
        if self.settings.keep_last is None:
            return []
        ckpt_dir = self.layout.run_dir(run_id) / "checkpoints"
        if not ckpt_dir.is_dir():
            return []
        steps: dict[int, list[Path]] = {}
        for p in ckpt_dir.iterdir():
            step = checkpoint_step(p)
            if step is not None:
                steps.setdefault(step, []).append(p)
        if not steps:
            return []
        headers: dict[int, dict[str, Any]] = {}
        for step, paths in steps.items():
            for p in paths:
                if is_compressed(p):
                    try:
                        headers[step] = codec.read_header(p)
                    except codec.CodecError as exc:
                        log.warning("%s (left alone)", exc)
        ordered = sorted(headers)
        keep_last = self.settings.keep_last
        keep = set(ordered[-keep_last:] if keep_last else [])  # all of them while there are fewer than N
        keep.add(max(steps))  # the run's newest checkpoint, in whatever form
        keep.update(s for s, h in headers.items() if h.get("meta", {}).get("reason") == "stage")
        todo = list(keep)
        while todo:  # a kept delta keeps its base chain
            h = headers.get(todo.pop())
            if h and h.get("base"):
                base_step = checkpoint_step(h["base"]["name"])
                if base_step is not None and base_step not in keep:
                    keep.add(base_step)
                    todo.append(base_step)
        removed = []
        for step in ordered:
            if step in keep:
                continue
            path = ckpt_dir / (f"step-{step:08d}" + RAW_SUFFIX + SUFFIX)
            for p in steps[step]:
                if is_compressed(p):
                    path = p
            path.unlink(missing_ok=True)
            removed.append(path)
            log.info("run %s: retention: removed %s", run_id, path.name)
        if removed:
            fsync_dir(ckpt_dir)
        return removed


def main(argv: list[str] | None = None) -> int:
    """``tritter-compress [--home DIR | --connect URL ...] [--keep-last N] [--keyframe-every K] [--threads T]``."""
    parser = sink_parser(Compressor, "Compress every new checkpoint to .safetensors.tzst and prune old ones.",
                         "the home whose runs/<id>/checkpoints to compress")
    parser.add_argument("--keep-last", type=bounded_int(0, 10**6), default=DEFAULT_KEEP_LAST, metavar="N",
                        help="also prune: keep each run's newest N compressed checkpoints and every stage-final one "
                             "(default: prune nothing; the run's --keep-checkpoints decides, and keeps the best-eval one)")
    parser.add_argument("--keyframe-every", type=bounded_int(1, 10**6), default=DEFAULT_KEYFRAME_EVERY, metavar="K", help=f"a full keyframe at least every K checkpoints; 1 = no deltas (default {DEFAULT_KEYFRAME_EVERY})")
    parser.add_argument("--threads", type=bounded_int(1, 256), help="compression threads (default: up to 4)")
    args = parser.parse_args(argv)
    return sink_main(Compressor, args, lambda: CompressSettings(keep_last=args.keep_last, keyframe_every=args.keyframe_every, threads=args.threads))


if __name__ == "__main__":
    sys.exit(main())
