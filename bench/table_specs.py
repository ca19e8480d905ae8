"""Which figures of each bench's JSON go into the docs, with labels, units, targets and kinds.

Declared once here, per results name (``bench/run_all.py``'s ``BENCHES``); ``bench/tables.py``
renders them.  A figure's ``kind`` says what a re-run of the same command does to it:

* ``exact``: arithmetic on integers (planner bytes, parameter counts, event counts): identical on
  any machine;
* ``deterministic``: seeded training on CPU (losses, their ratios, skip counts): identical on a
  re-run on the same machine and software, possibly not in the last digits on another CPU model;
* ``measured``: allocator peaks, RSS, sizes of files that hold timestamps: nearly the same;
* ``timing``: wall/CPU time, throughput, latency and their ratios: vary with load, never expected
  to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KIND_NOTE = {
    "exact": "exact",
    "deterministic": "same (seeded)",
    "measured": "≈ same",
    "timing": "varies (timing)",
}


class RenderError(Exception):
    """A block that cannot be rendered: a results file missing or unreadable, or a declared field absent."""


def lookup(obj: Any, path: str, name: str = "?") -> Any:
    """The value at dotted ``path`` in ``obj`` (``"runs.0.loss"``: integer parts index lists).

    Errors: RenderError naming the bench and the path when a part is missing.
    """
    value = obj
    for part in path.split("."):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise RenderError(f"{name}: the result has no field {path!r} (bench/table_specs.py declares it)") from None
    return value


@dataclass(frozen=True)
class Fig:
    """One figure: ``fmt.format(*values of fields)``, e.g. ``Fig("p50 / p99", ("p50_ms", "p99_ms"), "{} / {}", "ms")``.

    ``field`` is one dotted path or a tuple of them; a None value renders as "—", a bool as yes/no.
    """

    label: str
    field: str | tuple[str, ...]
    fmt: str = "{}"
    unit: str = ""
    target: str = ""
    kind: str = "timing"
    scale: float = 1.0  # numbers are multiplied by it first (KiB -> MiB: 1 / 1024)

    def __post_init__(self) -> None:
        if self.kind not in KIND_NOTE:
            raise ValueError(f"figure {self.label!r}: kind {self.kind!r} is not one of {', '.join(KIND_NOTE)}")

    def render(self, result: dict, name: str = "?", with_unit: bool = True) -> str:
        """The figure as markdown text; bold when the format asks for it (``**{}**``).

        Errors: RenderError when a field is missing or ``fmt`` does not fit its values.
        """
        fields = (self.field,) if isinstance(self.field, str) else self.field
        values = [lookup(result, f, name) for f in fields]
        if any(v is None for v in values):
            return "—"
        values = ["yes" if v is True else "no" if v is False else
                  v * self.scale if self.scale != 1.0 and isinstance(v, (int, float)) else v for v in values]
        try:
            text = self.fmt.format(*values)
        except (ValueError, TypeError, IndexError) as exc:
            raise RenderError(f"{name}: figure {self.label!r}: {self.fmt!r} cannot format {values!r} ({exc})") from None
        return f"{text} {self.unit}" if with_unit and self.unit else text


@dataclass(frozen=True)
class Table:
    """A figure table (``rows`` None: one line per Fig) or a row table (one line per item of the list at
    ``rows``; ``"."``: one line, the result itself)."""

    figs: tuple[Fig, ...]
    rows: str | None = None
    caption: str = ""
    where: tuple[tuple[str, Any], ...] = ()  # row tables: keep the items whose field equals the value


def _compress() -> tuple[Table, ...]:
    """bench/compress.py: one thread (CPU-time speeds), all cores (wall clock), groups, resume."""
    def speeds(where: tuple, caption: str, clock: str) -> Table:
        return Table(rows="results", where=where, caption=caption, figs=(
            *_keys("dtype", "codec"),
            Fig("ratio", "ratio", "{:.3f}x", kind="measured"),
            Fig("ratio ÷ ZipNN's", "ratio_vs_zipnn", "**{:.3f}**", target="≥ 1", kind="measured"),
            Fig("compress ÷ ZipNN", (f"compress{clock}_vs_zipnn.0", f"compress{clock}_vs_zipnn.1"), "{:.2f}–{:.2f}",
                target="≥ 1"),
            Fig("decompress ÷ ZipNN", (f"decompress{clock}_vs_zipnn.0", f"decompress{clock}_vs_zipnn.1"), "{:.2f}–{:.2f}",
                target="≥ 1"),
            Fig("bit-exact", "bit_exact", kind="exact"),
        ))

    return (
        speeds((("threads", 1),), "One thread; speeds in MB of original per CPU second, as ranges (min–max over the "
               "rounds) of the ratio to ZipNN in the same round:", "_cpu"),
        speeds((("all_cores", True),), "All cores (ZipNN with as many threads); wall-clock speeds, ranges of the ratio "
               "to ZipNN in the same round:", ""),
        Table(rows="groups", caption="Ratio per tensor group (delta: against the previous checkpoint):", figs=(
            *_keys("dtype", "group"),
            Fig("bytes", "bytes", "{:,}", kind="exact"),
            Fig("tritter full", "tritter_full", "**{:.3f}x**", kind="measured"),
            Fig("tritter delta", "tritter_delta", "{:.3f}x", kind="measured"),
            Fig("ZipNN", "zipnn", "{:.3f}x", kind="measured"),
            Fig("zstd-3", "zstd3", "{:.3f}x", kind="measured"),
        )),
        Table(figs=(
            Fig("checkpoints compared", ("checkpoints.0", "checkpoints.1", "fp32_bytes"), "{} → {} ({:,} B fp32)",
                kind="exact"),
            Fig("resume: tritter ÷ safetensors load (+ copy into tensors), warm page cache",
                ("resume.tritter_full_vs_safetensors.0", "resume.tritter_full_vs_safetensors.1"), "{:.2f}–{:.2f}",
                target="≥ 0.8"),
            Fig("resume: same, files evicted first (cold)", ("resume.tritter_full_cold_vs_safetensors_cold.0",
                "resume.tritter_full_cold_vs_safetensors_cold.1"), "{:.2f}–{:.2f}", target="≥ 0.8"),
        )),
    )


def _keys(*fields: str) -> tuple[Fig, ...]:
    """Row-table key columns: each field under its own name, exact."""
    return tuple(Fig(f, f, kind="exact") for f in fields)


def _gpu() -> tuple[Table, ...]:
    """bench/gpu.py on a GPU: one figure table per preset (100m, 1b)."""
    def preset(name: str) -> Table:
        at = f"presets.{name}."
        return Table(caption=f"**{name}**:", figs=(
            Fig("micro-batch × seq × accumulation, grad ckpt every, compiled",
                (at + "micro_batch", at + "seq_len", at + "accum", at + "grad_ckpt_every", at + "compiled"),
                "{} × {} × {}, {}, {}", kind="exact"),
            Fig("step (median) / tokens per second", (at + "step_s_median", at + "tokens_per_s"), "{:.3f} s / {:,.0f}"),
            Fig("**MFU** (6N + 12·L·h·d·T per token ÷ 989 TFLOP/s)", at + "mfu", "**{:.3f}**", target="≥ 0.40 at 1b"),
            Fig("peak (`max_memory_allocated`) / planner", (at + "peak_bytes", at + "predicted_peak_bytes"), "{:,} / {:,}",
                "B", kind="measured"),
            Fig("**peak ÷ planner**", at + "peak_vs_predicted", "**{:.3f}**", target="0.85 – 1.15", kind="measured"),
            Fig("loss, first → last step", (at + "losses.0", at + "losses.-1"), "{:.3f} → {:.3f}", target="finite, falling",
                kind="measured"),
        ))

    return preset("100m"), preset("1b")


def _planner_peak() -> tuple[Table, ...]:
    return (Table(rows=".", figs=(
        Fig("preset, micro-batch × seq, grad-ckpt every", ("preset", "batch", "seq", "every"), "{}, {} × {}, {}",
            kind="exact"),
        Fig("measured peak", "measured_peak_bytes", "{:,}", "B", kind="measured"),
        Fig("planner: kept activations + transient", "predicted_bytes", "{:,}", "B", kind="exact"),
        Fig("measured ÷ planner", "ratio", "**{:.3f}**", target="within 15%", kind="measured"),
    )),)


# Results rendered by their own bench into their own doc block, not by tables.py.
RENDERED_ELSEWHERE = {
    "growth_study": ".venv/bin/python bench/growth_study.py --from bench/results/growth_study.json --doc docs/growth.md",
}

SPECS: dict[str, tuple[Table, ...]] = {
    "bus": (Table(figs=(
        Fig("throughput, one publisher → one subscriber, ipc, msgspec `StepEvent`s", "events_per_s", "**{:,}**",
            "events/s", "≥ 50,000"),
        Fig("events lost in the throughput phase", "throughput_lost", "{:,}", target="0", kind="exact"),
        Fig("publish → decoded latency at 10k events/s, p50 / p99 / max", ("p50_ms", "p99_ms", "max_ms"),
            "{} / **{}** / {}", "ms", "p99 < 5 ms"),
        Fig("CPU per event, publisher / subscriber", ("cpu_us_per_event.publisher", "cpu_us_per_event.subscriber"),
            "{} / {}", "µs"),
        Fig("publish rate with a subscriber that never reads ÷ with none", "slow_subscriber.ratio", "{}",
            target="no blocking"),
        Fig("events the stuck subscriber kept (the rest dropped: PUB never blocks)", "slow_subscriber.stuck_subscriber_kept",
            "{:,}"),
        Fig("all targets met", "ok"),
    )),),
    "hybrid_state": (Table(rows="state", figs=(
        Fig("preset", "preset", kind="exact"),
        Fig("parameters", "params", "{:,}", kind="exact"),
        Fig("hybrid state", "hybrid_bytes_per_param", "**{}**", "B/param", kind="exact"),
        Fig("mid-stage checkpoint", "checkpoint_mb", "{}", "MB", kind="measured"),
        Fig("without hybrid", "checkpoint_without_hybrid_mb", "{}", "MB", kind="measured"),
    )),),
    "hybrid_lean": (Table(rows="runs", figs=(
        *_keys("preset", "probes"),
        Fig("mean probe error, fp32 history", "mean_error_old", "{:.5f}", kind="deterministic"),
        Fig("lean (fp16 × 2)", "mean_error_new", "**{:.5f}**", kind="deterministic"),
        Fig("largest difference", "max_abs_diff", "{:.1e}", kind="deterministic", target="< 0.01"),
    )),),
    "overhead": (Table(figs=(
        Fig("preset, steps, plain/tritterd pairs", ("preset", "steps", "repeats"), "{}, {}, {}", kind="exact"),
        Fig("per-step time, plain loop / through tritterd (median pair)", ("plain_ms", "tritterd_ms"), "{:.1f} / {:.1f}",
            "ms"),
        Fig("**ratio** tritterd ÷ plain (median of pairs)", "ratio", "**{:.3f}**", target="≤ 1.02"),
        Fig("pair ratios, min – max", ("ratio_min", "ratio_max"), "{:.3f} – {:.3f}"),
        Fig("worst step jitter (IQR ÷ median of step gaps)", "max_jitter", "{:.2f}"),
        Fig("noisy (rerun on a quiet machine)", "noisy"),
        Fig("losses bit-identical, plain vs tritterd", "losses_identical", target="yes", kind="deterministic"),
        Fig("every step in metrics.jsonl", "metrics_complete", target="yes", kind="exact"),
    )),),
    "stalled_subscriber": (Table(figs=(
        Fig("windows: seconds × repeats", ("window_s", "repeats"), "{} × {}", kind="exact"),
        Fig("median step time, base / reader stopped / A/A control",
            ("median_step_ms.base", "median_step_ms.stalled", "median_step_ms.control"), "{:,} / {:,} / {:,}", "ms"),
        Fig("**ratio** stalled ÷ base", "ratio", "**{}**", target="≈ the A/A control"),
        Fig("A/A control ÷ base (the machine's noise)", "control_ratio", "{}"),
    )),),
    "gpu_cpu": (Table(figs=(
        Fig("preset, micro-batch × seq, accumulation", ("presets.tiny.micro_batch", "presets.tiny.seq_len",
            "presets.tiny.accum"), "tiny, {} × {}, {}", kind="exact"),
        Fig("model FLOPs per token (6N + 12·L·h·d·T)", "presets.tiny.flops_per_token", "{:,}", kind="exact"),
        Fig("planner's predicted peak for that micro-batch", "presets.tiny.predicted_peak_bytes", "{:,}", "B",
            kind="exact"),
        Fig("loss per optimizer step", tuple(f"presets.tiny.losses.{i}" for i in range(5)),
            "{:.3f} → {:.3f} → {:.3f} → {:.3f} → {:.3f}", target="finite, falling", kind="deterministic"),
        Fig("eval loss before → after growing tiny into small", ("growth.eval_loss_before", "growth.eval_loss_after"),
            "{:.5f} → {:.5f}", kind="deterministic"),
        Fig("growth jump", "growth.jump", "**{}**", target="≈ 0", kind="deterministic"),
        Fig("tokens/s (CPU; MFU is meaningless here)", "presets.tiny.tokens_per_s", "{:.0f}"),
    )),),
    "gpu": _gpu(),
    "gpu_eager": _gpu(),
    "monitoring": (Table(rows="results", figs=(
        Fig("preset", "preset", kind="exact"),
        Fig("step", "step_s", "{:.2f}", "s"),
        Fig("eval", "eval_s", "{:.2f}", "s"),
        Fig("eval every", "eval_every", kind="exact"),
        Fig("**eval overhead**", "eval_overhead", "**{:.1%}**", target="< 5 %"),
        Fig("sample", "sample_s", "{:.2f}", "s"),
        Fig("sample every", "sample_every", kind="exact"),
        Fig("sample overhead", "sample_overhead", "{:.1%}"),
    )),),
    "checkpoint_save": (Table(figs=(
        Fig("preset, bytes saved, rounds", ("preset", "bytes", "rounds"), "{}, {:,} B, {}", kind="measured"),
        Fig("`save_file` / + fsync / tritter save / stall / before / SHA-256 alone (medians)",
            ("save_file_s", "save_file_fsync_s", "save_s", "stall_s", "legacy_s", "sha256_s"),
            "{:.2f} / {:.2f} / {:.2f} / {:.2f} / {:.2f} / {:.2f}", "s"),
        Fig("**stall ÷ save**", "stall_ratio", "**{}**", target="≤ 0.2"),
        Fig("save ÷ `save_file`", "save_ratio", "{}", target="≤ 1.2"),
        Fig("per-round range", "save_ratio_range", "{}"),
        Fig("SHA-256 alone ÷ `save_file` (the floor of save ÷ `save_file`)", "sha256_floor_ratio", "{}"),
        Fig("**save ÷ (`save_file` + fsync)**", "durable_ratio", "**{}**", target="≤ 1.2"),
        Fig("per-round range", "durable_ratio_range", "{}"),
        Fig("before ÷ `save_file`", "legacy_ratio", "{}"),
    )),),
    "hybrid": (Table(rows="runs", figs=(
        *_keys("preset", "steps", "seed"),
        Fig("backward passes skipped", "skipped", kind="deterministic"),
        Fig("share", "skip_share", "{:.1%}", kind="deterministic"),
        Fig("eval loss, `--no-hybrid`", "loss_full", "{:.4f}", kind="deterministic"),
        Fig("hybrid", "loss_hybrid", "{:.4f}", kind="deterministic"),
        Fig("**hybrid ÷ full**", "loss_ratio", "**{:.4f}**", target="≤ 1.03", kind="deterministic"),
        Fig("full step", "step_ms_full", "{:.0f}", "ms"),
        Fig("time hybrid ÷ full (in-run step medians)", "wall_ratio_in_run", "{:.3f}"),
    )),),
    "hybrid_syncs": (Table(rows="syncs", figs=(
        *_keys("preset", "steps"),
        Fig("parameter tensors", "param_tensors", kind="exact"),
        Fig("syncs/step `--no-hybrid`", "syncs_no_hybrid.full", "{:g}", kind="exact"),
        Fig("hybrid: true step", "syncs_hybrid.full", "**{:g}**", kind="exact"),
        Fig("probe", "syncs_hybrid.true_in_predict", "**{:g}**", kind="exact"),
        Fig("predicted step", "syncs_hybrid.predicted", "**{:g}**", kind="exact"),
        Fig("true-step time hybrid ÷ `--no-hybrid`", "true_step_ratio", "{:.2f}"),
    )),),
    "grad_ckpt": (Table(rows="cases", figs=(
        Fig("preset", "preset", kind="exact"),
        Fig("batch × seq", ("batch", "seq"), "{} × {}", kind="exact"),
        Fig("peak, N=0", "n0.peak_mib", "{:.1f}", "MiB", kind="measured"),
        Fig("peak ÷ N=0, every 4th block", "n4.peak_ratio", "**{:.2f}**", kind="measured"),
        Fig("every block", "n1.peak_ratio", "**{:.2f}**", kind="measured"),
        Fig("losses = N=0's (N=4, N=1)", ("n4.losses_match_n0", "n1.losses_match_n0"), "{}, {}", target="yes",
            kind="deterministic"),
        Fig("step time ÷ N=0 (N=4, N=1)", ("n4.step_time_ratio", "n1.step_time_ratio"), "{:.2f}, {:.2f}"),
    )),),
    "data": (Table(figs=(
        Fig("corpora: 1× / 10× / single line / speed text", ("corpus_mb.0", "corpus_mb.1", "oneline_mb", "speed_corpus_mb"),
            "{} / {} / {} / {}", "MB", kind="exact"),
        Fig("**rss_ratio** (peak RSS, 10× corpus ÷ 1× corpus)", ("rss_ratio", "rss_big_mb", "rss_small_mb"),
            "**{:.3f}** ({} ÷ {} MB)", target="≤ 1.2", kind="measured"),
        Fig("peak RSS, one single-line file", "oneline_rss_mb", "{}", "MB", target="bounded", kind="measured"),
        Fig("**speed_ratio** (tritter ÷ `encode_batch`, all cores)", ("speed_ratio", "mb_s_all_workers", "encode_batch_mb_s"),
            "**{:.2f}** ({} ÷ {} MB/s)", target="≥ 0.9"),
        Fig("tritter ÷ `encode_batch_fast`", "speed_ratio_vs_fast", "{:.2f}"),
        Fig("MB/s, 1 worker / all workers", ("mb_s_1_worker", "mb_s_all_workers"), "{} / {}"),
        Fig("**sampler_share** (wait per 100m batch ÷ estimated 100m GPU step)", ("sampler_share", "sampler_ms",
            "step_ms_estimate"), "**{:.2%}** ({} ms of {} ms)", target="< 1 %"),
        Fig("sampler_share without prefetch", "sampler_share_no_prefetch", "{:.2%}"),
    )),),
    "compress": _compress(),
    "compress_tiny": _compress(),
    "compress_memory": (
        Table(rows="rows", caption="Peak RSS of a fresh process per operation:",
              figs=(
            Fig("operation", "op", kind="exact"),
            Fig("peak RSS", "maxrss_kib", "{:.0f}", "MiB", kind="measured", scale=1 / 1024),
            Fig("within the bound", "within_bound", target="yes", kind="measured"),
            Fig("time", "seconds", "{:.1f}", "s"),
        )),
        Table(figs=(
            Fig("checkpoint, largest tensor", ("checkpoint_bytes", "largest_tensor_bytes"), "{:,} B, {:,} B", kind="exact"),
            Fig("import baseline (peak RSS of a process that only imports)", "import_baseline_kib", "{:.0f}", "MiB",
                kind="measured", scale=1 / 1024),
            Fig("bound: 2 × largest + 64 MiB × (1 + threads) + baseline", "bound_kib", "{:.0f}", "MiB", kind="measured",
                scale=1 / 1024),
            Fig("**every operation within the bound**", "all_within_bound", "**{}**", target="yes", kind="measured"),
        )),
    ),
    "planner_peak": _planner_peak(),
    "planner_peak_every4": _planner_peak(),
    "planner_peak_b2s512": _planner_peak(),
}
