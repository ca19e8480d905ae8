"""The progressive training loop: stages from --start to --end, growth between them, exact resume.

The loop knows nothing about ZeroMQ or the daemon: it reports through ``emit`` (events without
seq; the daemon's log numbers them) and takes commands from ``controls``.  Everything that
decides the loss curve lives in the checkpoint (weights, AdamW state, RNG states, data position,
stage and step), so a resumed run continues exactly where an uninterrupted one would be.

With ``config.hybrid`` (the default) some steps skip the backward pass and apply a predicted
update instead (daemon/engine/hybrid.py, docs/hybrid.md); the predictor's history and its phase
machine are checkpointed too, so exact resume holds mid-Predict as well.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
import torch

from tritter.daemon.engine.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    CheckpointInfo,
    HostBuffers,
    restore_rng,
    snapshot_checkpoint,
    write_snapshot,
)
from tritter.daemon.engine.async_checkpoint import BackgroundWriter, Pending
from tritter.daemon.engine import distributed
from tritter.daemon.engine.device import CompiledModule, autocast, compile_for_training, compile_note, is_compiled, peak_flops
from tritter.daemon.engine.distributed import Ranks
from tritter.daemon.engine.export import StageCard, export_stage
from tritter.formats.export_layout import export_dir, export_is_complete, export_relpath
from tritter.daemon.engine.data import Batches, DataError, TokenData, heldout_batches, identity_change, load_run_data
from tritter.daemon.engine.growth import grow
from tritter.daemon.engine import accumulation, retention
from tritter.daemon.engine.hybrid import DEFAULT_SETTINGS, FullTraining, HybridController, HybridSettings, StepController, StepPlan, StepReport
from tritter.recipe.budget import BatchPlan, config_steps, config_tokens, resolve_batch, stage_steps
from tritter.recipe.planner import flops_per_token, model_flops_utilization
from tritter.daemon.engine.monitoring import RunMonitor, monitor_for
from tritter.daemon.engine.model import LlamaForCausalLM, count_parameters, init_weights
from tritter.recipe.presets import Preset, get_preset, with_vocab
from tritter.daemon.engine.schedule import lr_at
from tritter.daemon.engine.seeding import stage_generator
from tritter.daemon.worker_protocol import Command, Controls, Outcome
from tritter.protocol.config import RunConfig
from tritter.protocol.events import (
    AnyEvent, CheckpointEvent, EvalEvent, Phase, PhaseEvent, PrepareEvent, RunEvent, StageEvent, StepEvent,
)

log = logging.getLogger("tritter.trainer")

EVAL_BATCHES = 8
EVAL_BATCH_SIZE = 8
# A checkpoint that cannot be written for lack of space pauses the run instead of failing it.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class EndRun(Exception):
    """Training must end now with ``outcome`` (a stop or shutdown while paused on a full disk, or
    while the corpus is being prepared)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


@dataclass
class Progress:
    """The trainer state that goes into every checkpoint besides weights and optimizer."""

    stage_index: int = 0
    step: int = 0  # global optimizer steps done
    stage_step: int = 0  # steps done in the current stage
    stage_done: bool = False  # the checkpoint closes its stage; resume grows into the next
    position: int = 0  # sequences consumed from the training stream
    tokens: int = 0  # tokens trained on in the current stage
    phase: Phase | Literal[""] = ""
    # The stage's global batch and length, fixed when it begins (recipe/budget.py), so a resume on
    # another device keeps them; 0 in checkpoints from before accumulation (recomputed on resume).
    micro_batch: int = 0  # sequences per forward/backward on each rank
    accum: int = 0  # micro-batches per optimizer step
    stage_total: int = 0  # optimizer steps of the current stage
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """The progress as a JSON-able dict (field name → value), for the checkpoint's trainer state."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Progress:
        """A Progress from ``to_dict``'s output; unknown keys (newer checkpoints) are dropped, missing ones take defaults."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)  # type: ignore[arg-type]


def make_optimizer(model: torch.nn.Module, preset: Preset, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``model`` with ``preset.train``'s LR, betas and weight decay; weight decay only on
    parameters with 2+ dims (matrices, embeddings), none on norms (as nanoGPT ``configure_optimizers``).
    ``fused``: torch's fused CUDA kernel.
    """
    settings = preset.train
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2), **kwargs)


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Mean loss (nats/token) of ``model`` over ``batches`` [(x, y)], int64 (B, T) each, in eval mode under
    the device's autocast, without gradients; the model's train/eval mode is restored.
    Raises ZeroDivisionError for an empty ``batches``.
    """
    was_training = model.training
    model.eval()
    with autocast(device):
        losses = [float(model(x.to(device), labels=y.to(device))) for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)


class Trainer:
    """Trains one run through its stages (grow, train, export), checkpointing and emitting events.

    ``emit`` sends events to the daemon; ``controls`` delivers its commands (polled every step);
    ``cache_dir`` holds token shards; with ``ranks`` (torchrun) every rank runs the loop and rank 0 reports.
    Raises (at construction) what ``load_run_data`` raises for unusable data.
    """

    def __init__(
        self,
        run_id: str,
        config: RunConfig,
        run_dir: Path,
        emit: Callable[[AnyEvent], None],
        controls: Controls,
        cache_dir: Path | None = None,
        device: torch.device | None = None,
        hybrid_settings: HybridSettings | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.run_id = run_id
        self.config = config
        self.run_dir = run_dir
        self._emit = emit
        self.controls = controls
        self.device = device or torch.device("cpu")
        self.stages = config.stages()
        # The run's corpus as token shards (prepare events while it tokenizes); refuses other data
        # than the run started on.  Its vocabulary sizes every stage's model.
        self._deferred: Command | None = None  # a pause/checkpoint that came while preparing data
        # --nproc: every rank runs this loop on its slice of one global batch; rank 0 alone
        # reports and writes checkpoints, and every decision that ends or pauses the loop is
        # broadcast from it, so all ranks always take the same path.
        self.ranks = ranks or Ranks()
        self.peak_flops = peak_flops(self.device)  # one GPU's, for the steps' MFU (None: not reported)
        self.monitor: RunMonitor | None = None  # set below; ``emit`` may run while the data is prepared
        self.data: TokenData = load_run_data(run_id, run_dir, config, cache_dir, self._emit_while_preparing)
        self.progress = Progress()
        self.progress.extra["data"] = self.data.identity()
        self.model: LlamaForCausalLM | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.hybrid_settings = hybrid_settings or DEFAULT_SETTINGS
        # How steps are taken: the hybrid phase machine, or every step full with --no-hybrid.
        self.hybrid: StepController = FullTraining()
        self.checkpoints: dict[int, retention.Record] = {}  # this run's checkpoints, for retention
        self.writer = BackgroundWriter()  # periodic checkpoints are written while training goes on
        self.snapshot_buffers = HostBuffers()  # host memory reused by every checkpoint's snapshot
        self._last_eval: tuple[int, float] | None = None  # (step, held-out loss) of the latest eval
        self.train_model: torch.nn.Module | None = None  # self.model, wrapped in DDP with --nproc
        # Periodic eval, samples, system stats and alerts after each step (rank 0; docs/monitoring.md).
        self.monitor = monitor_for(self)

    # -- plumbing ---------------------------------------------------------------------------
    def emit(self, event: AnyEvent) -> None:
        """Stamp ``event`` with the run id and ``ts`` (unix seconds), send it, and let the monitor see step events."""
        event.run_id = self.run_id
        event.ts = time.time()
        self._emit(event)
        if isinstance(event, EvalEvent):  # retention keeps the checkpoint with the best eval loss
            self._last_eval = (event.step, event.loss)
        if self.monitor is not None and isinstance(event, StepEvent):
            self.monitor.after_step(event)

    @property
    def preset(self) -> Preset:
        """The current stage's preset, its vocabulary sized to the run's tokenizer."""
        return with_vocab(get_preset(self.stages[self.progress.stage_index]), self.data.vocab_size)

    def _heldout(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # One fixed held-out set for the whole run (the first stage's sequence length), so eval
        # losses compare across stages: before and after growth they must match.
        seq_len = get_preset(self.stages[0]).train.seq_len
        return heldout_batches(self.data, EVAL_BATCH_SIZE, seq_len, EVAL_BATCHES)

    def _grad_ckpt_every(self) -> int:
        if self.config.grad_ckpt_every is not None:
            return self.config.grad_ckpt_every
        return self.preset.train.grad_ckpt_every

    def _checkpoint_every(self) -> int:
        return self.config.checkpoint_every or self.preset.train.checkpoint_every

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, reason: str, background: bool = False) -> None:
        """Write a checkpoint of the current step.

        ``background``: only the host copy happens now; a thread writes the file and the
        ``checkpoint`` event follows once it is durable (``_collect_checkpoint``).  Any write
        still in flight is finished first: never two at once.  On a full disk the previous
        checkpoint stays intact, the run pauses with the reason, and ``tritterctl resume``
        retries the write once space is back.
        """
        while True:
            problem = self._collect_checkpoint(block=True, pause=False)
            if problem is None and self.ranks.main:
                try:
                    self._write_checkpoint(reason, background)
                except OSError as error:
                    problem = self._disk_problem(error)
            problem = distributed.broadcast(self.ranks, problem)
            if problem is None:
                return
            self._pause_on_full_disk(problem)

    def _disk_problem(self, error: OSError) -> str:
        """The one-line reason of a full disk; any other OSError propagates (the run fails)."""
        if error.errno not in DISK_FULL:
            raise error
        log.error("cannot write the step %d checkpoint: %s", self.progress.step, error)
        return f"{error.strerror} ({errno.errorcode.get(error.errno or 0, '')})"

    def _pause_on_full_disk(self, problem: str) -> None:
        """Pause until ``resume`` (then return, to retry) or ``stop``/shutdown (EndRun)."""
        self.emit(RunEvent(
            status="paused",
            reason=f"cannot write the step {self.progress.step} checkpoint: {problem}; "
            f"free space, then: tritterctl resume {self.run_id}",
        ))
        command = self._paused()
        if command == Command.STOP:
            reason_text = f"stopped while the disk was full (step {self.progress.step} was not saved)"
            self.emit(RunEvent(status="stopped", reason=reason_text))
            raise EndRun(Outcome.STOPPED)
        if command == Command.SHUTDOWN:
            raise EndRun(Outcome.SHUTDOWN)
        self.emit(RunEvent(status="resumed"))

    def _collect_checkpoint(self, block: bool = False, pause: bool = True) -> str | None:
        """Report a background write that finished: its ``checkpoint`` event (and retention), or
        its full-disk reason.  With ``pause`` a full disk pauses the run here and, on resume,
        retries a checkpoint of the current step.  Called on every rank after each step (the
        outcome is broadcast over the CPU control group, without a device sync)."""
        problem: str | None = None
        if self.ranks.main and self.writer.busy:
            finished = self.writer.wait() if block else self.writer.poll()
            if finished is not None and finished.error is not None:
                problem = self._disk_problem(finished.error)
            elif finished is not None and finished.info is not None:
                self._checkpoint_durable(finished.pending, finished.info)
        if not pause:
            return problem
        problem = distributed.broadcast(self.ranks, problem)
        if problem is not None:
            self._pause_on_full_disk(problem)
            self.save("periodic")
        return None

    def _write_checkpoint(self, reason: str, background: bool = False) -> None:
        assert self.model is not None
        extra_tensors = None
        hybrid_state = self.hybrid.state()
        if hybrid_state is not None and not self.progress.stage_done:
            self.progress.extra["hybrid"] = hybrid_state
            extra_tensors = self.hybrid.tensors()
        else:  # a closed stage resumes by growing, which resets the predictor
            self.progress.extra.pop("hybrid", None)
        self.progress.extra["checkpoints"] = retention.dump_records(self.checkpoints)
        pending = Pending(checkpoint_path(self.run_dir, self.progress.step), self.progress.step, self.preset.name, reason, self.progress.stage_done)
        snapshot = snapshot_checkpoint(self.model, self.optimizer, self.progress.to_dict(), extra_tensors, self.snapshot_buffers)
        if background:
            self.writer.submit(pending, snapshot)
        else:
            self._checkpoint_durable(pending, write_snapshot(pending.path, snapshot))

    def _checkpoint_durable(self, pending: Pending, info: CheckpointInfo) -> None:
        """The file is on disk for good: announce it, then apply retention."""
        self.emit(
            CheckpointEvent(
                path=str(info.path.relative_to(self.run_dir)),
                step=pending.step,
                stage=pending.stage,
                bytes=info.bytes,
                sha256=info.sha256,
                reason=pending.reason,
            )
        )
        self._retain(pending, info.bytes, info.sha256)

    def _retain(self, pending: Pending, size: int, sha256: str) -> None:
        """Record the checkpoint just made durable, then delete what retention no longer keeps
        (daemon/engine/retention.py), one ``checkpoint`` event with status ``deleted`` per file."""
        step = pending.step
        eval_loss = self._last_eval[1] if self._last_eval is not None and self._last_eval[0] == step else None
        self.checkpoints[step] = retention.Record(pending.stage, pending.stage_done, eval_loss, size, sha256)
        try:
            gone = retention.prune(self.run_dir, self.checkpoints, self.config.keep_checkpoints or retention.DEFAULT_KEEP)
        except OSError as error:  # pruning is housekeeping: never fail or pause the run for it
            log.warning("checkpoint retention skipped: %s", error)
            return
        for deletion in gone:
            self.emit(CheckpointEvent(
                path=str(deletion.path.relative_to(self.run_dir)), step=deletion.step, stage=deletion.record.stage,
                bytes=deletion.bytes, sha256=deletion.record.sha256, reason="retention", status="deleted",
            ))

    def _latest_checkpoint(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that loads; each damaged one skipped is noted in
        ``self.skipped_checkpoints`` (one line each) for the ``resumed`` event's reason."""
        self.skipped_checkpoints: list[str] = []
        for path in reversed(list_checkpoints(self.run_dir)):
            try:
                return load_checkpoint(path)
            except CheckpointError as error:
                log.warning("CHECKPOINT DAMAGED, falling back to an earlier one: %s", error)
                self.skipped_checkpoints.append(f"{path.name} is damaged ({error})")
        return None

    def _restore(self, loaded: LoadedCheckpoint) -> None:
        self.progress = Progress.from_dict(loaded.trainer_state)
        if problem := identity_change(self.progress.extra.get("data"), self.data):
            raise DataError(problem)  # the checkpoint was trained on other data
        self.progress.extra["data"] = self.data.identity()
        self.model = LlamaForCausalLM(self.preset.shape).to(self.device)
        self.model.load_state_dict(loaded.model_state)
        self.train_model = self._training_module()
        self.optimizer = make_optimizer(self.model, self.preset, fused=self.device.type == "cuda")
        if loaded.optimizer_state is not None:
            self.optimizer.load_state_dict(loaded.optimizer_state)
        self.hybrid = FullTraining()
        if self.config.hybrid:
            state = self.progress.extra.get("hybrid")
            if isinstance(state, dict):
                self.hybrid = HybridController.restore(self.model, self.optimizer, state, loaded.extra)
            else:  # a checkpoint written without hybrid state: start the predictor afresh
                self.hybrid = HybridController(self.model, self.optimizer, self.hybrid_settings)
        if not self.progress.micro_batch:  # written before accumulation: size the stage as it ran
            self._size_stage(probe=False)
        self.checkpoints = retention.load_records(self.progress.extra.get("checkpoints"))
        self.checkpoints.setdefault(self.progress.step, retention.Record(self.preset.name, self.progress.stage_done))
        restore_rng(loaded.rng)

    def _training_module(self) -> torch.nn.Module | CompiledModule:
        """``self.model`` as the training step calls it: DDP-wrapped under --nproc, then compiled
        when wanted (``device.compile_wanted``).  Eval and predicted steps call ``self.model``
        directly, so grad-mode and batch-shape changes never recompile the training graph."""
        assert self.model is not None
        return compile_for_training(distributed.wrap(self.ranks, self.model, self.device), self.device, self.config.compile)

    # -- stages -----------------------------------------------------------------------------
    def _begin_stage(self, index: int) -> None:
        """Build (or grow into) the model for stage ``index`` and report its starting eval loss."""
        generator = stage_generator(self.config.seed, index)
        preset = with_vocab(get_preset(self.stages[index]), self.data.vocab_size)
        grown_from = None
        if self.model is None:
            model = LlamaForCausalLM(preset.shape)
            init_weights(model, generator)
        else:
            grown_from = self.stages[index - 1]
            model = grow(self.model.cpu(), preset.shape, generator)
        self.model = model.to(self.device)
        self.train_model = self._training_module()
        self.progress.stage_index = index
        self.progress.stage_step = 0
        self.progress.stage_done = False
        self.progress.tokens = 0
        # A fresh AdamW per stage: the moments of a grown matrix have no meaning for its new
        # rows/columns, and the stage's own warmup lets the new state settle.
        self.optimizer = make_optimizer(self.model, preset, fused=self.device.type == "cuda")
        # The predictor resets too: updates of a smaller model say nothing about this one.
        self.hybrid = HybridController(self.model, self.optimizer, self.hybrid_settings) if self.config.hybrid else FullTraining()
        batch = self._size_stage(probe=True)
        eval_loss = evaluate(self.model, self._heldout(), self.device)
        self.progress.extra["eval_loss_start"] = eval_loss
        self.emit(
            StageEvent(
                status="started",
                stage=preset.name,
                index=index,
                step=self.progress.step,
                params=count_parameters(self.model),
                eval_loss=eval_loss,
                grown_from=grown_from,
                micro_batch=batch.micro_batch,
                accum_steps=batch.accum,
                tokens_per_step=batch.tokens_per_step,
                steps=self.progress.stage_total,
                compiled=is_compiled(self.train_model),
                note=compile_note(self.train_model),
            )
        )

    def _export(self, eval_loss: float) -> str:
        """The stage's Hugging Face folder (run_dir/export/<preset>), path relative to the run."""
        assert self.model is not None
        index = self.progress.stage_index
        start = self.progress.extra.get("eval_loss_start")
        card = StageCard(
            run_id=self.run_id, run_name=self.config.name, stage=self.preset.name, index=index,
            step=self.progress.step, stage_steps=self.progress.stage_step, tokens=self.progress.tokens,
            eval_loss=eval_loss, eval_loss_start=start if isinstance(start, float) else None,
            lineage=tuple(self.stages[: index + 1]), corpus=self.data.source, seed=self.config.seed,
            hybrid=self.config.hybrid, hf_user=self.config.hf_user,
        )
        return str(export_stage(self.model, self.preset.name, self.run_dir, card, tokenizer=self.data.tokenizer_spec).relative_to(self.run_dir))

    def _export_on_main(self, eval_loss: float, reuse: bool = False) -> str:
        """Export the stage on rank 0 while the other ranks wait (one writer per shared folder);
        with ``reuse``, keep an export that is already complete.  Returns the path relative to the run."""

        def work() -> str:
            if reuse and export_is_complete(export_dir(self.run_dir, self.preset.name)):
                return export_relpath(self.preset.name)
            return self._export(eval_loss)

        return distributed.on_main(self.ranks, work)

    def _end_stage(self) -> None:
        assert self.model is not None
        eval_loss = evaluate(self.model, self._heldout(), self.device)
        self._last_eval = (self.progress.step, eval_loss)
        # Export before the stage checkpoint: a crash in between re-trains and re-exports.
        # Rank 0 writes it (every rank holds the same weights); the others wait for it.
        export_path = self._export_on_main(eval_loss)
        self.progress.stage_done = True
        self.save("stage")
        self._stage_completed(eval_loss, export_path)

    def _stage_completed(self, eval_loss: float, export_path: str) -> None:
        assert self.model is not None
        self.emit(
            StageEvent(
                status="completed",
                stage=self.preset.name,
                index=self.progress.stage_index,
                step=self.progress.step,
                params=count_parameters(self.model),
                tokens=self.progress.tokens,
                eval_loss=eval_loss,
                export_path=export_path,
                compiled=is_compiled(self.train_model),
                note=compile_note(self.train_model),
            )
        )

    def _reannounce_stage_end(self) -> None:
        """Resuming from a stage-final checkpoint: say the stage completed, in case the crash came
        before the event left (the daemon drops it when the log already has it)."""
        assert self.model is not None
        eval_loss = evaluate(self.model, self._heldout(), self.device)
        export_path = self._export_on_main(eval_loss, reuse=True)
        self._stage_completed(eval_loss, export_path)

    def _set_phase(self, phase: Phase, reason: str = "") -> None:
        if phase != self.progress.phase:
            self.progress.phase = phase
            self.emit(PhaseEvent(phase=phase, step=self.progress.step + 1, stage=self.preset.name, reason=reason))

    # -- commands ---------------------------------------------------------------------------
    def _emit_while_preparing(self, event: PrepareEvent) -> None:
        """Emit a ``prepare`` event, then act on a command that arrived meanwhile, so a long
        tokenization can be stopped: stop and shutdown end the run before training (finished
        shards stay in the cache and a resume continues from them); pause and checkpoint wait
        for the first step, when there is a model to save.  Under --nproc commands are only
        polled in the training loop (every rank must poll at the same points)."""
        self._emit(event)
        if self.ranks.distributed or self._deferred is not None:  # ranks poll in lockstep only
            return
        command = self.controls.poll()
        if command == Command.STOP:
            self.emit(RunEvent(status="stopped", reason="stopped by request while preparing the corpus"))
            raise EndRun(Outcome.STOPPED)
        if command == Command.SHUTDOWN:
            raise EndRun(Outcome.SHUTDOWN)
        self._deferred = command

    def _next_command(self) -> Command | None:
        """The command to act on before the next step: one deferred from data preparation, else a poll."""
        command, self._deferred = self._deferred, None
        return command if command is not None else self.controls.poll()

    def _handle(self, command: Command | None) -> Outcome | None:
        """Act on a command; return an outcome when training must end now."""
        if command == Command.CHECKPOINT:
            self.save("manual")
        elif command == Command.PAUSE:
            self.save("pause")
            self.emit(RunEvent(status="paused"))
            command = self._paused()
            if command == Command.RESUME:
                self.emit(RunEvent(status="resumed"))
                return None
            return self._handle(command)
        elif command == Command.STOP:
            self.save("stop")
            self.emit(RunEvent(status="stopped", reason="stopped by request"))
            return Outcome.STOPPED
        elif command == Command.SHUTDOWN:
            self.save("shutdown")
            return Outcome.SHUTDOWN
        return None

    def _paused(self) -> Command:
        """Block while paused (a checkpoint request is still served); return resume, stop or shutdown."""
        while True:
            command = self.controls.wait()
            if command in (Command.RESUME, Command.STOP, Command.SHUTDOWN):
                return command
            if command == Command.CHECKPOINT:
                self.save("manual")

    # -- the loop ---------------------------------------------------------------------------
    def _size_stage(self, probe: bool) -> BatchPlan:
        """Fix the current stage's micro-batch, accumulation steps and length in ``progress``.

        The global batch is ``--batch-tokens`` or the preset's (recipe/budget.py); the micro-batch
        is ``--micro-batch``, else on CUDA (with ``probe``) the largest that fits
        (accumulation.probe_micro_batch), else the preset's batch size.  The stage's steps come from
        ``--steps`` or ``--tokens`` / tokens per step.  Returns the BatchPlan.
        """
        assert self.model is not None
        settings = self.preset.train
        world = self.ranks.world
        target = self.config.batch_tokens or settings.batch_tokens
        micro = self.config.micro_batch
        if micro is None and target is not None and probe and self.device.type == "cuda":
            rows_per_rank = max(1, round(target / (settings.seq_len * world)))
            micro = accumulation.probe_micro_batch(
                self.model, settings.seq_len, self.preset.shape.vocab_size, rows_per_rank, rows_per_rank, self.device,
                self._grad_ckpt_every(),
            )
        batch = resolve_batch(settings.seq_len, settings.batch_size, settings.batch_tokens, world, self.config.batch_tokens, micro)
        self.progress.micro_batch, self.progress.accum = batch.micro_batch, batch.accum
        tokens = config_tokens(self.config)
        self.progress.stage_total = stage_steps(self.progress.stage_index, config_steps(self.config), tokens, batch.tokens_per_step)
        return batch

    def _set_lr(self) -> float:
        """The LR of the next step, set on every param group.  Warmup-stable-decay across growth:
        earlier stages hold their peak LR and only the last one decays, because decay spent on a
        model about to be grown is thrown away (docs/growth.md).  ``--lr`` replaces every peak."""
        assert self.optimizer is not None
        settings = self.preset.train
        last_stage = self.progress.stage_index == len(self.stages) - 1
        min_ratio = settings.min_lr_ratio if last_stage else 1.0
        peak = self.config.lr or settings.lr
        lr = lr_at(self.progress.stage_step, self.progress.stage_total, peak, settings.warmup_steps, min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_step(self, batches: Batches) -> None:
        """One optimizer step on one global batch: ``accum`` micro-batches on every rank (forward
        only when the hybrid plan predicts the step), clip, AdamW, then the controller's bookkeeping."""
        assert self.model is not None and self.optimizer is not None and self.train_model is not None
        started = time.perf_counter()
        lr = self._set_lr()
        plan = self.hybrid.before_step(self.progress.stage_step, self.preset.train.warmup_steps)
        self._set_phase(plan.phase, plan.reason)
        x, y = (distributed.shard(self.ranks, t) for t in batches.next())
        micro = accumulation.split(x, y, self.progress.micro_batch)
        norm: float | None = None
        if plan.predicted:  # no backward: the controller applies the predicted update
            local = accumulation.forward_only(self.model, micro, self.device)
        else:
            local = accumulation.forward_backward(self.train_model, micro, self.device)
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.preset.train.grad_clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        loss = distributed.mean(self.ranks, local).item()  # the global batch's loss, on every rank
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.progress.step + 1}")
        report = self.hybrid.after_step(plan, loss, lr, norm)
        self.progress.position = batches.position
        self._step_done(plan, report, loss, lr, x.numel() * self.ranks.world, time.perf_counter() - started)

    def _step_done(self, plan: StepPlan, report: StepReport, loss: float, lr: float, tokens: int, elapsed: float) -> None:
        """Count the step (``tokens`` of the global batch, ``elapsed`` seconds) and emit its event."""
        self.progress.step += 1
        self.progress.stage_step += 1
        self.progress.tokens += tokens
        tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
        mfu = None
        if self.peak_flops:  # a predicted step runs the forward only: a third of the training FLOPs
            work = flops_per_token(self.preset.shape, self.preset.train.seq_len) / (3 if plan.predicted else 1)
            mfu = model_flops_utilization(tokens_per_s, work, self.peak_flops * self.ranks.world)
        self.emit(
            StepEvent(
                step=self.progress.step,
                loss=loss,
                gradient_norm=report.gradient_norm,
                phase=plan.phase,
                was_predicted=plan.predicted,
                prediction_error=report.prediction_error,
                step_time_ms=elapsed * 1000.0,
                stage=self.preset.name,
                lr=lr,
                tokens=self.progress.tokens,
                tokens_per_s=tokens_per_s,
                mfu=mfu,
            )
        )

    def run(self) -> Outcome:
        """Train from the latest checkpoint (or from scratch) to the last stage, acting on commands.

        Returns the Outcome (completed, stopped or shutdown).  Raises FloatingPointError on a
        non-finite loss (after a ``nonfinite_loss`` alert) and whatever else fails; the worker reports that as failed.
        """
        try:
            return self._run()
        except FloatingPointError as error:  # a NaN/inf loss: alert first, then fail the run
            if self.monitor is not None:
                self.monitor.nonfinite(self.progress.step + 1, str(error))
            raise
        except EndRun as end:
            return end.outcome
        finally:
            self.writer.close()

    def _run(self) -> str:
        loaded = self._latest_checkpoint()
        if loaded is not None:
            self._restore(loaded)
            # The daemon announced the resume from the newest checkpoint; a fallback says why.
            reason = "; ".join(self.skipped_checkpoints)[:500]
            self.emit(RunEvent(status="resumed", resume_step=self.progress.step, reason=reason))
        first_stage = self.progress.stage_index
        if loaded is not None and self.progress.stage_done:
            self._reannounce_stage_end()
            first_stage += 1
        for index in range(first_stage, len(self.stages)):
            if loaded is None or index != self.progress.stage_index or self.progress.stage_done:
                self._begin_stage(index)
            loaded = None
            settings = self.preset.train
            assert self.model is not None
            self.model.set_grad_checkpointing(self._grad_ckpt_every())
            self.model.train()
            # One global batch per step (recipe/budget.py), sliced by rank, then into micro-batches.
            global_batch = self.progress.micro_batch * self.progress.accum * self.ranks.world
            batches = Batches(self.data.train, global_batch, settings.seq_len, self.config.seed, self.progress.position,
                              prefetch=True)
            every = self._checkpoint_every()
            while self.progress.stage_step < self.progress.stage_total:
                outcome = self._handle(self._next_command())
                if outcome:
                    return outcome
                self._train_step(batches)
                self._collect_checkpoint()
                if self.progress.stage_step % every == 0 and self.progress.stage_step < self.progress.stage_total:
                    self.save("periodic", background=True)
            self._end_stage()
        self.emit(RunEvent(status="completed"))
        return Outcome.COMPLETED
