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
from typing import Protocol

import torch

from tritter.daemon.engine.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from tritter.daemon.engine import distributed
from tritter.daemon.engine.device import CompiledModule, autocast, compile_for_training, compile_note, is_compiled
from tritter.daemon.engine.distributed import Ranks
from tritter.daemon.engine.export import StageCard, export_stage
from tritter.formats.export_layout import export_dir, export_is_complete, export_relpath
from tritter.daemon.engine.data import Batches, TokenData, heldout_batches, load_token_data
from tritter.daemon.engine.growth import grow
from tritter.daemon.engine.hybrid import DEFAULT_SETTINGS, HybridController, HybridSettings, StepPlan
from tritter.daemon.engine.monitoring import monitor_for
from tritter.daemon.engine.model import LlamaForCausalLM, count_parameters, init_weights
from tritter.recipe.presets import Preset, get_preset
from tritter.daemon.engine.schedule import lr_at
from tritter.protocol.config import RunConfig
from tritter.protocol.events import AnyEvent, CheckpointEvent, Phase, PhaseEvent, RunEvent, StageEvent, StepEvent

log = logging.getLogger("tritter.trainer")

EVAL_BATCHES = 8
EVAL_BATCH_SIZE = 8
# A checkpoint that cannot be written for lack of space pauses the run instead of failing it.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class Controls(Protocol):
    def poll(self) -> str | None: ...  # a pending command, without blocking
    def wait(self) -> str: ...  # block until a command arrives


class Outcome:
    COMPLETED = "completed"
    STOPPED = "stopped"
    SHUTDOWN = "shutdown"


class EndRun(Exception):
    """Training must end now with ``outcome`` (a stop or shutdown while paused on a full disk)."""

    def __init__(self, outcome: str) -> None:
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
    phase: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Progress:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)  # type: ignore[arg-type]


def _stage_generator(seed: int, stage_index: int) -> torch.Generator:
    # Init and growth draw from their own generator so that resuming never depends on how
    # much of the global RNG stream an interrupted run had used.
    return torch.Generator().manual_seed(seed * 1000 + stage_index)


def make_optimizer(model: torch.nn.Module, preset: Preset, fused: bool = False) -> torch.optim.AdamW:
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
    was_training = model.training
    model.eval()
    with autocast(device):
        losses = [float(model(x.to(device), labels=y.to(device))) for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)


class Trainer:
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
        self.data: TokenData = load_token_data(cache_dir, config.corpus and Path(config.corpus))
        self.progress = Progress()
        self.model: LlamaForCausalLM | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.hybrid_settings = hybrid_settings or DEFAULT_SETTINGS
        self.hybrid: HybridController | None = None  # None with --no-hybrid
        # --nproc: every rank runs this loop on its slice of one global batch; rank 0 alone
        # reports and writes checkpoints, and every decision that ends or pauses the loop is
        # broadcast from it, so all ranks always take the same path.
        self.ranks = ranks or Ranks()
        self.train_model: torch.nn.Module | None = None  # self.model, wrapped in DDP with --nproc
        # Periodic eval, samples, system stats and alerts after each step (rank 0; docs/monitoring.md).
        self.monitor = monitor_for(self)

    # -- plumbing ---------------------------------------------------------------------------
    def emit(self, event: AnyEvent) -> None:
        event.run_id = self.run_id
        event.ts = time.time()
        self._emit(event)
        if self.monitor is not None and isinstance(event, StepEvent):
            self.monitor.after_step(event)

    @property
    def preset(self) -> Preset:
        return get_preset(self.stages[self.progress.stage_index])

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
    def save(self, reason: str) -> None:
        """Write a checkpoint.  On a full disk the previous checkpoint stays intact, the run pauses
        with the reason, and ``tritterctl resume`` retries the write once space is back."""
        while True:
            problem: str | None = None
            if self.ranks.main:
                try:
                    self._write_checkpoint(reason)
                except OSError as error:
                    if error.errno not in DISK_FULL:
                        raise
                    log.error("cannot write the step %d checkpoint: %s", self.progress.step, error)
                    problem = f"{error.strerror} ({errno.errorcode.get(error.errno or 0, '')})"
            problem = distributed.broadcast(self.ranks, problem)
            if problem is None:
                return
            self.emit(RunEvent(
                status="paused",
                reason=f"cannot write the step {self.progress.step} checkpoint: {problem}; "
                f"free space, then: tritterctl resume {self.run_id}",
            ))
            command = self._paused()
            if command == "stop":
                reason_text = f"stopped while the disk was full (step {self.progress.step} was not saved)"
                self.emit(RunEvent(status="stopped", reason=reason_text))
                raise EndRun(Outcome.STOPPED)
            if command == "shutdown":
                raise EndRun(Outcome.SHUTDOWN)
            self.emit(RunEvent(status="resumed"))

    def _write_checkpoint(self, reason: str) -> None:
        assert self.model is not None
        extra_tensors = None
        if self.hybrid is not None and not self.progress.stage_done:
            self.progress.extra["hybrid"] = self.hybrid.state()
            extra_tensors = self.hybrid.tensors()
        else:  # a closed stage resumes by growing, which resets the predictor
            self.progress.extra.pop("hybrid", None)
        info = save_checkpoint(
            checkpoint_path(self.run_dir, self.progress.step),
            self.model,
            self.optimizer,
            self.progress.to_dict(),
            extra_tensors,
        )
        self.emit(
            CheckpointEvent(
                path=str(info.path.relative_to(self.run_dir)),
                step=self.progress.step,
                stage=self.preset.name,
                bytes=info.bytes,
                sha256=info.sha256,
                reason=reason,
            )
        )

    def _latest_checkpoint(self) -> LoadedCheckpoint | None:
        for path in reversed(list_checkpoints(self.run_dir)):
            try:
                return load_checkpoint(path)
            except CheckpointError as error:
                log.warning("CHECKPOINT DAMAGED, falling back to an earlier one: %s", error)
        return None

    def _restore(self, loaded: LoadedCheckpoint) -> None:
        self.progress = Progress.from_dict(loaded.trainer_state)
        self.model = LlamaForCausalLM(self.preset.shape).to(self.device)
        self.model.load_state_dict(loaded.model_state)
        self.train_model = self._training_module()
        self.optimizer = make_optimizer(self.model, self.preset, fused=self.device.type == "cuda")
        if loaded.optimizer_state is not None:
            self.optimizer.load_state_dict(loaded.optimizer_state)
        self.hybrid = None
        if self.config.hybrid:
            state = self.progress.extra.get("hybrid")
            if isinstance(state, dict):
                self.hybrid = HybridController.restore(self.model, state, loaded.extra)
            else:  # a checkpoint written without hybrid state: start the predictor afresh
                self.hybrid = HybridController(self.model, self.hybrid_settings)
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
        generator = _stage_generator(self.config.seed, index)
        preset = get_preset(self.stages[index])
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
        self.hybrid = HybridController(self.model, self.hybrid_settings) if self.config.hybrid else None
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
            hybrid=self.config.hybrid,
        )
        return str(export_stage(self.model, self.preset.name, self.run_dir, card).relative_to(self.run_dir))

    def _end_stage(self) -> None:
        assert self.model is not None
        eval_loss = evaluate(self.model, self._heldout(), self.device)
        # Export before the stage checkpoint: a crash in between re-trains and re-exports.
        export_path = self._export(eval_loss)
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
        done = export_is_complete(export_dir(self.run_dir, self.preset.name))
        export_path = export_relpath(self.preset.name) if done else self._export(eval_loss)
        self._stage_completed(eval_loss, export_path)

    def _set_phase(self, phase: Phase, reason: str = "") -> None:
        if phase != self.progress.phase:
            self.progress.phase = phase
            self.emit(PhaseEvent(phase=phase, step=self.progress.step + 1, stage=self.preset.name, reason=reason))

    # -- commands ---------------------------------------------------------------------------
    def _handle(self, command: str | None) -> str | None:
        """Act on a command; return an outcome when training must end now."""
        if command == "checkpoint":
            self.save("manual")
        elif command == "pause":
            self.save("pause")
            self.emit(RunEvent(status="paused"))
            command = self._paused()
            if command == "resume":
                self.emit(RunEvent(status="resumed"))
                return None
            return self._handle(command)
        elif command == "stop":
            self.save("stop")
            self.emit(RunEvent(status="stopped", reason="stopped by request"))
            return Outcome.STOPPED
        elif command == "shutdown":
            self.save("shutdown")
            return Outcome.SHUTDOWN
        return None

    def _paused(self) -> str:
        """Block while paused (a checkpoint request is still served); return resume, stop or shutdown."""
        while True:
            command = self.controls.wait()
            if command in ("resume", "stop", "shutdown"):
                return command
            if command == "checkpoint":
                self.save("manual")

    # -- the loop ---------------------------------------------------------------------------
    def _train_step(self, batches: Batches) -> None:
        assert self.model is not None and self.optimizer is not None
        settings = self.preset.train
        started = time.perf_counter()
        # Warmup-stable-decay across growth: earlier stages hold their peak LR and only the last one
        # decays, because decay spent on a model about to be grown is thrown away (docs/growth.md).
        last_stage = self.progress.stage_index == len(self.stages) - 1
        min_ratio = settings.min_lr_ratio if last_stage else 1.0
        lr = lr_at(self.progress.stage_step, self.config.steps, settings.lr, settings.warmup_steps, min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        hybrid = self.hybrid
        if hybrid is None:
            plan = StepPlan("warmup" if self.progress.stage_step < settings.warmup_steps else "full", False)
        else:
            plan = hybrid.plan(self.progress.stage_step, settings.warmup_steps)
        self._set_phase(plan.phase, plan.reason)  # type: ignore[arg-type]
        x, y = (distributed.shard(self.ranks, t) for t in batches.next())
        error: float | None = None
        if plan.predicted:
            assert hybrid is not None
            # Predict: forward only (the loss is reported and watched), then the predicted update.
            with torch.no_grad(), autocast(self.device):
                local = self.model(x.to(self.device), labels=y.to(self.device))
            loss_value = distributed.mean(self.ranks, local).item()  # the same on every rank
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {self.progress.step + 1}")
            if not hybrid.watch_loss(loss_value, in_predict=True):
                hybrid.predictor.apply_predicted(lr)
            # (a loss jump withholds this step's update and falls back to Correct)
            norm = hybrid.last_grad_norm  # no gradient this step: the last measured norm
        else:
            if hybrid is not None:
                hybrid.predictor.before_step()
            assert self.train_model is not None
            with autocast(self.device):
                loss = self.train_model(x.to(self.device), labels=y.to(self.device))
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss_value = distributed.mean(self.ranks, loss).item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {self.progress.step + 1}")
            if hybrid is not None:
                error = hybrid.predictor.after_step(lr)
                hybrid.last_grad_norm = norm
                hybrid.watch_loss(loss_value, in_predict=plan.phase == "predict")
                hybrid.true_step_done(plan, error)
        elapsed = time.perf_counter() - started
        self.progress.step += 1
        self.progress.stage_step += 1
        self.progress.position = batches.position
        batch_tokens = x.numel() * self.ranks.world
        self.progress.tokens += batch_tokens
        self.emit(
            StepEvent(
                step=self.progress.step,
                loss=loss_value,
                gradient_norm=norm,
                phase=self.progress.phase,  # type: ignore[arg-type]
                was_predicted=plan.predicted,
                prediction_error=error,
                step_time_ms=elapsed * 1000.0,
                stage=self.preset.name,
                lr=lr,
                tokens=self.progress.tokens,
                tokens_per_s=batch_tokens / elapsed if elapsed > 0 else 0.0,
            )
        )

    def run(self) -> str:
        try:
            return self._run()
        except FloatingPointError as error:  # a NaN/inf loss: alert first, then fail the run
            if self.monitor is not None:
                self.monitor.nonfinite(self.progress.step + 1, str(error))
            raise
        except EndRun as end:
            return end.outcome

    def _run(self) -> str:
        loaded = self._latest_checkpoint()
        if loaded is not None:
            self._restore(loaded)
            self.emit(RunEvent(status="resumed", resume_step=self.progress.step))
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
            # One global batch per step (the preset's batch per rank), sliced by rank.
            global_batch = settings.batch_size * self.ranks.world
            batches = Batches(self.data.train, global_batch, settings.seq_len, self.config.seed, self.progress.position)
            every = self._checkpoint_every()
            while self.progress.stage_step < self.config.steps:
                outcome = self._handle(self.controls.poll())
                if outcome:
                    return outcome
                self._train_step(batches)
                if self.progress.stage_step % every == 0 and self.progress.stage_step < self.config.steps:
                    self.save("periodic")
            self._end_stage()
        self.emit(RunEvent(status="completed"))
        return Outcome.COMPLETED
