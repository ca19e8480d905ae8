"""tritter-upload against a real tritterd and a local HTTP double of the hub.

The daemon's log is seeded with a finished run (``--upload --hf-user alice``) whose stage
folders are real exports, so these tests need no training; ``test_upload_end_to_end`` in
test_upload_e2e.py trains a real run.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import Daemon, ctl, events, tool
from hub_double import HubDouble

from tritter.daemon.engine.export import StageCard, export_stage
from tritter.daemon.engine.model import LlamaForCausalLM, count_parameters, init_weights
from tritter.recipe.presets import get_preset
from tritter.daemon.eventlog import EventLog
from tritter.protocol.config import RunConfig
from tritter.protocol.events import RunEvent, StageEvent
from tritter.protocol.home import Layout

TOKEN = "hf_secret_test_token_123"
RUN_ID = "20260101-000000-beef"
RUN_NAME = "growing"


@pytest.fixture
def hub() -> Iterator[HubDouble]:
    double = HubDouble(token=TOKEN).start()
    yield double
    double.stop()


def seed_run(home: Path, stages: tuple[str, ...] = ("tiny",), upload: bool = True, export: bool = True) -> None:
    """A finished run in the log (as the daemon would have recorded it) with its stage exports."""
    layout = Layout(home)
    layout.runs.mkdir(parents=True, exist_ok=True)
    config = RunConfig(name=RUN_NAME, start=stages[0], end=stages[-1], steps=4, upload=upload, hf_user="alice")
    log = EventLog(layout.log)
    log.append(RunEvent(run_id=RUN_ID, status="started", run_name=RUN_NAME, config=config))
    for index, stage in enumerate(stages):
        model = LlamaForCausalLM(get_preset(stage).shape)
        init_weights(model, torch.Generator().manual_seed(index))
        params = count_parameters(model)
        step = 4 * (index + 1)
        log.append(StageEvent(run_id=RUN_ID, status="started", stage=stage, index=index, step=step - 4, params=params))
        path = None
        if export:
            card = StageCard(run_id=RUN_ID, run_name=RUN_NAME, stage=stage, index=index, step=step, stage_steps=4)
            path = str(export_stage(model, stage, layout.run_dir(RUN_ID), card).relative_to(layout.run_dir(RUN_ID)))
        log.append(StageEvent(run_id=RUN_ID, status="completed", stage=stage, index=index, step=step, params=params,
                              tokens=8192, eval_loss=7.5, export_path=path))
    log.append(RunEvent(run_id=RUN_ID, status="completed"))
    log.close()


class UploaderProcess:
    def __init__(self, home: Path, hub: HubDouble, token: str | None = TOKEN, extra: list[str] | None = None) -> None:
        self.home = home
        self.stderr_path = home / f"upload-{time.monotonic_ns()}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
        if token is not None:
            env["HF_TOKEN"] = token
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [tool("tritter-upload"), "--home", str(home), "--attempts", "3", "--backoff", "0.2",
                 "--request-timeout", "10", *(extra or [])],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def uploaders() -> Iterator[list[UploaderProcess]]:
    started: list[UploaderProcess] = []
    yield started
    for proc in started:
        proc.stop()


def uploads(home: Path, stage: str | None = None) -> list[dict]:
    return [e for e in events(home) if e["kind"] == "upload" and (stage is None or e["stage"] == stage)]


def wait_for(home: Path, predicate, what: str, timeout: float = 60.0, proc: UploaderProcess | None = None) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = uploads(home)
        if predicate(got):
            return got
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen within {timeout} s; upload events: {uploads(home)}\n"
                         + (proc.stderr() if proc else ""))


def wait_live(proc: UploaderProcess, timeout: float = 60.0) -> None:
    """Until the uploader has caught up with the log and gone live (it logs ``bus: live``).

    Going live is when it schedules every stage its fold says still needs an upload, so after
    this a wrongly scheduled job already exists and will be first in line for the slot.
    """
    deadline = time.monotonic() + timeout
    while "bus: live" not in proc.stderr():
        assert proc.process.poll() is None, f"tritter-upload exited with {proc.process.returncode}:\n{proc.stderr()}"
        assert time.monotonic() < deadline, f"tritter-upload not live within {timeout} s:\n{proc.stderr()}"
        time.sleep(0.1)


def uploads_after_request(home: Path, proc: UploaderProcess, stage: str, run_id: str = RUN_ID) -> list[dict]:
    """The upload events from now until an explicit ``tritterctl upload RUN --stage STAGE`` completes.

    The barrier for "a restarted uploader pushes nothing by itself": call it after ``wait_live``.
    A job the uploader scheduled on its own when it went live takes the (single) upload slot
    before the requested one exists, so it would show up in this list ahead of the request's
    ``started``; when the list is exactly requested/started/completed for ``stage``, nothing
    else was uploaded.  No clock is involved.
    """
    head = events(home)[-1]["seq"]
    ctl(home, "upload", run_id, "--stage", stage)
    done = lambda e: any(x["seq"] > head and x["stage"] == stage and x["status"] == "completed" for x in e)  # noqa: E731
    return [e for e in wait_for(home, done, f"requested upload of {stage}", proc=proc) if e["seq"] > head]


def final(evs: list[dict], stage: str) -> dict | None:
    mine = [e for e in evs if e["stage"] == stage and e["status"] in ("completed", "failed") and not e["will_retry"]]
    return mine[-1] if mine else None


def test_uploads_each_stage_to_its_branch_once(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home, ("tiny", "small"))
    daemon.start()
    up = UploaderProcess(home, hub)
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny") and final(e, "small"), "both stages uploaded", proc=up)
    for stage in ("tiny", "small"):
        done = final(evs, stage)
        assert done["status"] == "completed", done
        assert done["repo"] == f"alice/{RUN_NAME}" and done["revision"] == stage
        assert done["url"].endswith(f"/alice/{RUN_NAME}/tree/{stage}") and done["commit"]
        assert [e["status"] for e in evs if e["stage"] == stage] == ["started", "completed"]
    repo = hub.repos[f"alice/{RUN_NAME}"]
    assert repo.private, "repos are created private by default"
    assert set(repo.branches) == {"main", "tiny", "small"}
    assert [len(repo.branches[s]) for s in ("tiny", "small")] == [1, 1]
    assert repo.tags == {"tiny-step4": final(evs, "tiny")["commit"], "small-step8": final(evs, "small")["commit"]}
    assert set(repo.files["tiny"]) >= {"config.json", "model.safetensors", "tokenizer.json", "README.md"}
    assert hub.unknown == []
    # The fold (run.json, tritterctl status) carries the outcome.
    status = ctl(home, "status", RUN_ID).stdout
    assert "upload completed" in status
    # Restart the uploader: the fold says completed, so nothing is pushed again.  Once it is
    # live, an explicit request for small is the barrier: only that one upload happens.
    up.stop()
    up2 = UploaderProcess(home, hub)
    uploaders.append(up2)
    wait_live(up2)
    after = uploads_after_request(home, up2, "small")
    assert [(e["stage"], e["status"]) for e in after] == [("small", "requested"), ("small", "started"),
                                                          ("small", "completed")], up2.stderr()
    assert "uploading " + RUN_ID + "/tiny" not in up2.stderr()
    assert len(repo.branches["tiny"]) == 1 and len(repo.branches["small"]) == 2
    # ...and so does a restart that has lost its state file (it folds the log from seq 1); an
    # explicit request uploads again (a new commit on the same branch).
    up2.stop()
    (home / "upload.state").unlink()
    up3 = UploaderProcess(home, hub)
    uploaders.append(up3)
    wait_live(up3)
    head = events(home)[-1]["seq"]
    out = ctl(home, "upload", RUN_ID, "--stage", "tiny").stdout
    assert "tiny" in out and f"alice/{RUN_NAME}" in out
    evs = wait_for(home, lambda e: any(x["seq"] > head and x["status"] == "completed" for x in e), "re-upload", proc=up3)
    assert [(e["stage"], e["status"]) for e in evs if e["seq"] > head] == [
        ("tiny", "requested"), ("tiny", "started"), ("tiny", "completed")], up3.stderr()
    assert len(repo.branches["tiny"]) == 2 and len(repo.branches["small"]) == 2
    # The token never shows up in events, logs or run.json.
    blob = str(events(home)) + up.stderr() + up2.stderr() + up3.stderr()
    blob += (home / "runs" / RUN_ID / "run.json").read_text()
    assert TOKEN not in blob
    assert all(h in ("", f"Bearer {TOKEN}") for h in hub.auth_headers)


def test_server_error_then_success_is_retried(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home)
    daemon.start()
    hub.inject("create", status=500, times=1)
    up = UploaderProcess(home, hub)
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=up)
    assert [(e["status"], e["attempt"], e["will_retry"]) for e in evs] == [
        ("started", 1, False), ("failed", 1, True), ("started", 2, False), ("completed", 2, False)
    ]
    assert "HTTP 500" in evs[1]["error"]
    assert len(hub.commits(f"alice/{RUN_NAME}", "tiny")) == 1


def test_timeout_is_retried(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home)
    daemon.start()
    hub.inject("branch", status=200, times=1, delay_s=8.0)  # the client gives up after 3 s
    up = UploaderProcess(home, hub, extra=["--request-timeout", "3"])
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=up)
    assert [e["status"] for e in evs] == ["started", "failed", "started", "completed"]
    assert "timed out" in evs[1]["error"] and evs[1]["will_retry"]
    assert len(hub.commits(f"alice/{RUN_NAME}", "tiny")) == 1


def test_persistent_failure_gives_up_clearly_and_a_request_retries(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home)
    daemon.start()
    hub.inject("create", status=503, times=3)
    up = UploaderProcess(home, hub)
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=up)
    last = final(evs, "tiny")
    assert last["status"] == "failed" and last["attempt"] == 3
    assert last["error"].startswith("gave up after 3 attempts: hub error HTTP 503")
    assert hub.commits(f"alice/{RUN_NAME}", "tiny") == []
    assert "upload failed" in ctl(home, "status", RUN_ID).stdout
    # Not lost: asking again uploads it.
    ctl(home, "upload", RUN_ID)
    evs = wait_for(home, lambda e: e[-1]["status"] == "completed", "upload after request", proc=up)
    assert len(hub.commits(f"alice/{RUN_NAME}", "tiny")) == 1


def test_rejected_token_fails_at_once_without_retry(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home)
    daemon.start()
    up = UploaderProcess(home, hub, token="hf_wrong_token_456")
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=up)
    assert [(e["status"], e["attempt"]) for e in evs] == [("started", 1), ("failed", 1)]
    assert evs[-1]["error"].startswith("token rejected") and not evs[-1]["will_retry"]
    assert hub.count("create") == 1
    assert "hf_wrong_token_456" not in up.stderr() + str(uploads(home))
    # A final failure is retried neither by the uploader nor by a restart: with a good token (a
    # restarted uploader) the only upload is the one asked for, and it succeeds.
    up.stop()
    assert len(uploads(home)) == 2, "no automatic retry after a rejected token"
    up2 = UploaderProcess(home, hub)
    uploaders.append(up2)
    wait_live(up2)
    after = uploads_after_request(home, up2, "tiny")
    assert [(e["status"], e["attempt"]) for e in after] == [("requested", 0), ("started", 1), ("completed", 1)], after


def test_no_token_is_a_clear_failure(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home)
    daemon.start()
    up = UploaderProcess(home, hub, token=None)
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=up)
    assert evs[-1]["status"] == "failed" and evs[-1]["error"].startswith("no Hugging Face token")
    assert hub.count("create") == 0


def test_interrupted_upload_is_resumed_by_a_restart(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home)
    daemon.start()
    hub.inject("commit", status=200, times=1, delay_s=600.0)  # hangs (the uploader's timeout is raised below)
    up = UploaderProcess(home, hub, extra=["--request-timeout", "900"])
    uploaders.append(up)
    wait_for(home, lambda e: any(x["status"] == "started" for x in e), "upload start", proc=up)
    deadline = time.monotonic() + 120
    while hub.count("commit") == 0:  # the commit request is in flight (and hangs)
        assert time.monotonic() < deadline, "the upload never reached its commit"
        time.sleep(0.1)
    # Stopped mid-upload (SIGTERM): it exits at once, not when the hanging request (10 min) would
    # end; the bound below is far from both. The log says "started" and nothing more.
    up.process.terminate()
    assert up.process.wait(timeout=120) == 0
    assert uploads(home)[-1]["status"] == "started"
    up2 = UploaderProcess(home, hub)
    uploaders.append(up2)
    evs = wait_for(home, lambda e: final(e, "tiny"), "resumed upload", proc=up2)
    assert evs[-1]["status"] == "completed"


def test_ctl_upload_validation(home: Path, daemon: Daemon) -> None:
    seed_run(home, upload=False)
    daemon.start()
    bad = ctl(home, "upload", RUN_ID, "--stage", "small", check=False)
    assert bad.returncode == 2 and "no stage 'small'" in bad.stderr
    bad = ctl(home, "upload", "nope", check=False)
    assert bad.returncode == 2 and "no run" in bad.stderr
    bad = ctl(home, "upload", RUN_ID, "--stage", "huge", check=False)
    assert bad.returncode == 2
    ok = ctl(home, "upload", RUN_ID)
    assert f"{RUN_ID}: upload of tiny to alice/{RUN_NAME} requested" in ok.stdout
    assert [e["status"] for e in uploads(home)] == ["requested"]
    human = ctl(home, "events").stdout
    assert "upload" in human and "tiny requested alice/growing@tiny" in human


def test_forbidden_is_final_at_once(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    """HTTP 403 (the token may not write there) is not retried: one attempt, a final failure."""
    seed_run(home)
    daemon.start()
    hub.inject("create", status=403, times=5)
    up = UploaderProcess(home, hub)
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=up)
    assert [(e["status"], e["attempt"], e["will_retry"]) for e in evs] == [("started", 1, False), ("failed", 1, False)]
    assert evs[-1]["error"].startswith("permission denied (HTTP 403)")
    assert hub.count("create") == 1 and hub.commits(f"alice/{RUN_NAME}", "tiny") == []
    assert "upload failed" in ctl(home, "status", RUN_ID).stdout


def test_missing_export_is_a_clear_final_failure(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    seed_run(home, export=False)  # the stage completed, but its export folder is not there
    daemon.start()
    up = UploaderProcess(home, hub)
    uploaders.append(up)
    evs = wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=up)
    last = evs[-1]
    assert last["status"] == "failed" and not last["will_retry"] and last["attempt"] == 1
    assert "export folder" in last["error"] and "missing or incomplete" in last["error"]
    assert hub.count("create") == 0, "nothing is sent to the hub without a complete export"


def test_public_flag_and_a_second_uploader_waits_for_the_lock(home: Path, hub: HubDouble, daemon: Daemon, uploaders: list) -> None:
    """--public creates the repo public; a second tritter-upload on the same home waits on
    HOME/upload.lock and takes over when the first one exits."""
    seed_run(home)
    daemon.start()
    first = UploaderProcess(home, hub, extra=["--public"])
    uploaders.append(first)
    wait_for(home, lambda e: final(e, "tiny"), "upload outcome", proc=first)
    assert hub.repos[f"alice/{RUN_NAME}"].private is False
    wait_live(first)
    second = UploaderProcess(home, hub)
    uploaders.append(second)
    deadline = time.monotonic() + 60
    while "waiting for it to exit" not in second.stderr():
        assert second.process.poll() is None and time.monotonic() < deadline, second.stderr()
        time.sleep(0.1)
    assert "bus: live" not in second.stderr()  # it waits; it does not subscribe
    first.stop()
    wait_live(second)  # the lock is free: the second one takes over
    after = uploads_after_request(home, second, "tiny")
    assert [e["status"] for e in after] == ["requested", "started", "completed"]
