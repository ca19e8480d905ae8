"""Monitoring end to end with real daemons: periodic eval and samples in the log and the recorder's
files, system stats, ``events --kind``, the Prometheus endpoint, the TensorBoard sink (exactly
once across its own kill -9 and a daemon restart), and alerts (divergence via --lr, stall,
lost worker) delivered to ``--on-alert``."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import Daemon, EventStream, children_of, cmdline, ctl, events, tool, wait_for_metrics, wait_until
from prometheus_client.parser import text_string_to_metric_families


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _tb_losses(logdir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not logdir.is_dir():  # the sink has not seen the run yet
        return []
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    if "train/loss" not in acc.Tags()["scalars"]:
        return []
    return [(s.step, s.value) for s in acc.Scalars("train/loss")]


def _same_as_metrics(tb: list[tuple[int, float]], metrics: list[dict]) -> bool:
    # TensorBoard stores float32: compare with the metrics.jsonl losses rounded the same way.
    return [s for s, _ in tb] == [m["step"] for m in metrics] and \
        [v for _, v in tb] == [float(np.float32(m["loss"])) for m in metrics]


@pytest.mark.timeout(900)  # one run of 4 tiny steps (minutes on a loaded 2-core machine) plus the checks
def test_eval_samples_system_metrics_and_tensorboard(home: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("It is a truth universally acknowledged\nElizabeth said\n")
    # A 1 TFLOP/s "GPU" peak: CPU steps then carry an MFU through every sink.
    daemon = Daemon(home, ["--metrics", "127.0.0.1:0", "--with-tensorboard"]).start(env={"TRITTER_PEAK_TFLOPS": "1"})
    try:
        run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "4", "--eval-every", "2",
                     "--sample-every", "4", "--sample-prompts", str(prompts), "--checkpoint-every", "4").stdout.strip()
        url = wait_until(lambda: (m := re.search(r"Prometheus metrics on (http://\S+)", daemon.stderr())) and m.group(1), 30, "metrics url")
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/metrics")
        assert ctl(home, "wait", run_id, "--timeout", "600").returncode == 0
        log = events(home)
        evals = [e for e in log if e["kind"] == "eval"]
        assert [e["step"] for e in evals] == [2, 4]
        for e in evals:
            assert e["perplexity"] == pytest.approx(math.exp(e["loss"])) and e["tokens"] > 0
        samples = [e for e in log if e["kind"] == "sample"]
        assert [e["step"] for e in samples] == [4]
        for e in samples:
            assert [s["prompt"] for s in e["samples"]] == ["It is a truth universally acknowledged", "Elizabeth said"]
            assert all(s["greedy"] and s["sampled"] for s in e["samples"])
        system = [e for e in log if e["kind"] == "system"]
        assert system and system[0]["rss_bytes"] > 0 and system[0]["host_memory_total_bytes"] > 0 and system[0]["gpus"] == []
        stage_done = [e for e in log if e["kind"] == "stage" and e["status"] == "completed"]
        assert stage_done and stage_done[0]["eval_loss"] is not None  # stage events keep their eval loss
        # The recorder's files: every eval / sample once, the same numbers as the log.
        run_dir = home / "runs" / run_id
        rows = wait_until(lambda: r if len(r := _jsonl(run_dir / "eval.jsonl")) == 2 else None, 120, "eval.jsonl")
        assert [(r["step"], r["loss"]) for r in rows] == [(e["step"], e["loss"]) for e in evals]
        lines = wait_until(lambda: r if len(r := _jsonl(run_dir / "samples.jsonl")) == 1 else None, 120, "samples.jsonl")
        assert [r["samples"] for r in lines] == [e["samples"] for e in samples]
        # events --kind filters (text and JSON).
        only = [json.loads(x) for x in ctl(home, "events", "--json", "--kind", "eval,alert").stdout.splitlines()]
        assert [e["seq"] for e in only] == [e["seq"] for e in log if e["kind"] in ("eval", "alert")]
        text = ctl(home, "events", "--kind", "system").stdout.splitlines()
        assert text and all(" system " in line and "rss" in line for line in text)
        bad = ctl(home, "events", "--kind", "evals", check=False)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown event kind 'evals'" in bad.stderr
        # Prometheus: the run's numbers as run.json has them (refreshed every 0.5 s).
        state = json.loads((run_dir / "run.json").read_text())
        key = (("name", state["run_name"]), ("run_id", run_id))
        scraped = wait_until(lambda: (m := _scrape(url)).get(("tritter_run_status", (*key, ("status", "completed")))) == 1.0 and m,
                             10, "completed in /metrics")
        assert scraped[("tritter_run_step", key)] == state["current_step"] == 4
        assert scraped[("tritter_run_eval_loss", key)] == pytest.approx(evals[-1]["loss"])
        assert scraped[("tritter_run_loss", key)] == pytest.approx(state["current_loss"])
        last_step = [e for e in log if e["kind"] == "step"][-1]
        assert 0 < last_step["mfu"] < 1 and scraped[("tritter_run_mfu", key)] == pytest.approx(state["mfu"]) == last_step["mfu"]
        assert scraped[("tritter_run_status", (*key, ("status", "running")))] == 0.0
        assert scraped[("tritter_events_logged_total", ())] >= log[-1]["seq"]
        assert scraped[("tritter_event_log_bytes", ())] > 0 and ("tritter_log_fsync_seconds", ()) in scraped
        assert scraped[("tritter_subscribers", ())] >= 1  # at least the recorder and the tensorboard sink
        # The Grafana dashboard asks only for metrics the daemon serves.
        dashboard = (Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text()
        with urllib.request.urlopen(url, timeout=10) as response:  # every family, with or without samples
            families = {f.name for f in text_string_to_metric_families(response.read().decode())}
        served = families | {f"{name}_total" for name in families}
        assert set(re.findall(r"tritter_[a-z_]+", dashboard)) <= served
        # TensorBoard (supervised child): the losses read back equal metrics.jsonl.
        metrics = wait_for_metrics(home, run_id, 4)
        wait_until(lambda: _same_as_metrics(_tb_losses(home / "tensorboard" / run_id), metrics), 60, "tensorboard losses", every=1.0)
    finally:
        daemon.stop()


@pytest.mark.timeout(1200)  # a 12-step run with a kill -9 of the sink and of the daemon
def test_tensorboard_exactly_once_across_its_kill9_and_a_daemon_restart(home: Path) -> None:
    daemon = Daemon(home, ["--no-recorder"]).start()
    sink = recorder = None
    try:
        recorder = subprocess.Popen([tool("tritter-record"), "--home", str(home)], stderr=subprocess.DEVNULL)
        sink = subprocess.Popen([tool("tritter-tensorboard"), "--home", str(home)], stderr=subprocess.DEVNULL)
        run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "12", "--checkpoint-every", "4",
                     "--eval-every", "0", "--sample-every", "0").stdout.strip()
        logdir = home / "tensorboard" / run_id
        wait_until(lambda: len(_tb_losses(logdir)) >= 3, 300, "first tensorboard steps", every=0.5)
        sink.kill()  # kill -9 the sink mid-run ...
        sink.wait(timeout=10)
        wait_for_metrics(home, run_id, 6, timeout=300)
        daemon.kill9()  # ... and the daemon: the run resumes from its checkpoint on restart
        daemon = Daemon(home, ["--no-recorder"]).start()
        sink = subprocess.Popen([tool("tritter-tensorboard"), "--home", str(home)], stderr=subprocess.DEVNULL)
        assert ctl(home, "wait", run_id, "--timeout", "600").returncode == 0
        metrics = wait_for_metrics(home, run_id, 12)
        assert [m["step"] for m in metrics] == list(range(1, 13))
        wait_until(lambda: _same_as_metrics(_tb_losses(logdir), metrics), 60, "tensorboard = metrics.jsonl", every=1.0)
    finally:
        for process in (sink, recorder):  # never leave a sink behind, whatever failed
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        daemon.stop()


def _worker_pid(daemon: Daemon, run_id: str) -> int:
    return wait_until(lambda: next((p for p in children_of(daemon.pid) if run_id in cmdline(p) and "worker_main" in cmdline(p)), None),
                      60, "the worker process")


@pytest.mark.timeout(1200)  # a diverging run (tens of tiny steps), then a stall and a kill
def test_alerts_divergence_stall_lost_worker_and_on_alert(home: Path) -> None:
    hook_out = home.parent / "hook.jsonl"
    daemon = Daemon(home, ["--on-alert", f"cat >> {hook_out}", "--stall-factor", "3", "--stall-min-s", "2"]).start()
    stream = EventStream(home)
    try:
        # --lr far above the preset's 3e-3: the loss climbs and stays up (sustained divergence).
        run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "60", "--lr", "0.99", "--no-hybrid",
                     "--eval-every", "0", "--sample-every", "0", "--checkpoint-every", "100").stdout.strip()
        diverged = stream.until(lambda e: e["kind"] == "alert" and e["reason"] in ("divergence", "nonfinite_loss"), 600)
        assert diverged["level"] == "critical" and diverged["source"] == "worker"
        if diverged["reason"] == "divergence":  # still training: freeze the worker, then kill it
            worker = _worker_pid(daemon, run_id)
            os.kill(worker, signal.SIGSTOP)
            try:
                stall = stream.until(lambda e: e["kind"] == "alert" and e["reason"] == "stall", 120)
                assert stall["source"] == "daemon" and stall["value"] > stall["threshold"] >= 2
            finally:
                os.kill(worker, signal.SIGKILL)
            lost = stream.until(lambda e: e["kind"] == "alert" and e["reason"] == "lost_worker", 60)
            assert lost["level"] == "critical" and "SIGKILL" in lost["message"]
        stream.until(lambda e: e["kind"] == "run" and e["status"] == "failed", 120)
        alerts = [e for e in events(home) if e["kind"] == "alert"]
        # --on-alert got every alert, as JSON on stdin, one object per line.
        delivered = wait_until(lambda: d if len(d := _jsonl(hook_out)) >= len(alerts) else None, 60, "hook output")
        assert sorted(d["seq"] for d in delivered) == [a["seq"] for a in alerts]
        status = json.loads(ctl(home, "status", run_id, "--json").stdout)
        assert status["alert_count"] == len(alerts) and status["alerts"][-1]["reason"] == alerts[-1]["reason"]
    finally:
        stream.close()
        daemon.stop()


def test_metrics_address_in_use_is_one_line_and_exit_2(home: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([tool("tritterd"), "--home", str(home), "--no-recorder", "--metrics", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and errors == [f"tritterd: error: cannot serve --metrics on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in result.stderr
    bad = subprocess.run([tool("tritterd"), "--home", str(home), "--metrics", "localhost:http"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("tritterd: error: --metrics expects HOST:PORT")


def test_a_bad_peak_flops_override_stops_tritterd_at_start_in_one_line(home: Path) -> None:
    for value in ("abc", "0", "-5", "inf"):
        result = subprocess.run([tool("tritterd"), "--home", str(home), "--no-recorder"], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "TRITTER_PEAK_TFLOPS": value})
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"tritterd: error: TRITTER_PEAK_TFLOPS must be a positive number of TFLOP/s, got {value!r}"]
