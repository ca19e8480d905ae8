"""``tritter-upload``: pushes each finished stage of ``--upload`` runs to the Hugging Face hub.

An ordinary subscriber, like the recorder.  It folds the event stream (the same ``fold`` as
the daemon) and keeps its own snapshot of that fold plus its cursor in ``HOME/upload.state``,
so a restart continues from where it was without re-reading the whole log.

What it uploads, for runs whose config names an ``hf_user``:

- a stage that completed (its ``export_path`` folder is ready), when the run has ``upload``;
- a stage with an ``upload`` event ``requested`` (``tritterctl upload RUN [--stage S]``);
- a stage whose upload was ``started`` (or ``failed`` with a retry due) when the uploader
  stopped: it is picked up again.

The repo is ``USER/<run name>`` (created private unless ``--public``), one branch per stage
(named like the preset), and a tag ``<stage>-step<N>`` on the commit.  Every outcome is an
``upload`` event in the daemon's log, reported with a ``Report`` request: the log is the
only record, so a stage whose upload the fold says is ``completed`` is never uploaded again
(unless someone asks again), and one that has not completed is never forgotten.

Failures: 5xx, 408/429, timeouts and network errors are retried with exponential backoff
(``--attempts`` tries, delays doubling from ``--backoff`` seconds, capped at 60 s), each
failed try recorded as ``failed`` with ``will_retry``; 401/403 (the token is rejected or may
not write there), other 4xx and a missing token fail at once, for good, with the reason.
The token comes from ``HF_TOKEN`` or the hub's own login (``huggingface_hub.get_token()``)
and is never printed, logged or put in an event.
"""

from __future__ import annotations

from tritter.clients.sink_signals import stop_quietly_while_starting

# First of all, before the imports below: run as a program, a SIGTERM/SIGINT from here on exits 0
# (docs/operations.md, "Exit status").
stop_quietly_while_starting(__name__, "tritter-upload")

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from tritter.protocol.cli_args import bounded_float, bounded_int
from tritter.clients.connection import Connection, DaemonUnavailable, RequestFailed
from tritter.clients.sink_base import Sink, SinkSettings, sink_main, sink_parser
from tritter.clients.subscription import LIVE
from tritter.clients.target import Target
from tritter.formats.export_layout import export_is_complete, export_relpath
from tritter.formats.files import atomic_write
from tritter.protocol.control import Report
from tritter.protocol.events import AnyEvent, PhaseEvent, StepEvent, UploadEvent
from tritter.protocol.home import Layout
from tritter.protocol.state import RunState, StageState, fold

log = logging.getLogger("tritter-upload")

MAX_ATTEMPTS = 5
BACKOFF_S = 2.0
BACKOFF_CAP_S = 60.0
REQUEST_TIMEOUT_S = 60.0
REPORT_RETRY_S = 1.0


@dataclass(frozen=True)
class UploadSettings(SinkSettings):
    """``tritter-upload`` options.

    ``attempts``: tries per stage upload (>= 1); ``backoff_s``: first retry delay in seconds
    (>= 0, doubling, capped at ``backoff_cap_s``); ``request_timeout_s``: per hub request
    (> 0); ``public``: create new hub repos public.  ValueError (one line) otherwise.
    """

    attempts: int = MAX_ATTEMPTS
    backoff_s: float = BACKOFF_S
    backoff_cap_s: float = BACKOFF_CAP_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    public: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attempts < 1 or not self.backoff_s >= 0 or not self.request_timeout_s > 0:
            raise ValueError("--attempts must be >= 1, --backoff >= 0, --request-timeout > 0")


class UploadFailure(Exception):
    """One failed attempt: ``reason`` is safe to show (no token); ``retry`` says whether to try again."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


@dataclass(frozen=True)
class Job:
    """One stage upload to do: the run id and the stage's preset name."""

    run_id: str
    stage: str


@dataclass(frozen=True)
class Uploaded:
    """A finished upload: the revision's page ``url`` on the hub and the ``commit`` id."""

    url: str
    commit: str


def backoff_delay(attempt: int, base: float = BACKOFF_S, cap: float = BACKOFF_CAP_S) -> float:
    """Seconds to wait after failed try ``attempt`` (1-based): base, 2·base, 4·base, ... capped."""
    return min(cap, base * (2 ** (attempt - 1)))


def find_token() -> str | None:
    """HF_TOKEN, else the hub's own login (``hf auth login``); None when there is neither."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token()


def _scrub(text: str, token: str | None) -> str:
    text = " ".join(str(text).split())  # one line
    if token:
        text = text.replace(token, "***")
    return text[:500]


def classify(error: BaseException, token: str | None) -> UploadFailure:
    """Turn what the hub client raised into a reason to show and a retry decision."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        first = _scrub(str(error).split("\n", 1)[0], token)
        if status == 401:
            return UploadFailure(
                "token rejected (HTTP 401): the Hugging Face token is invalid or expired; "
                "set HF_TOKEN or run `hf auth login`, then `tritterctl upload RUN`",
                retry=False,
            )
        if status == 403:
            return UploadFailure(f"permission denied (HTTP 403): the token may not write there ({first})", retry=False)
        if status in (408, 429) or status >= 500:
            return UploadFailure(f"hub error HTTP {status}: {first}", retry=True)
        return UploadFailure(f"hub refused the request (HTTP {status}): {first}", retry=False)
    if isinstance(error, httpx2.TimeoutException):
        return UploadFailure(f"request timed out ({type(error).__name__}): {_scrub(str(error), token) or 'no answer'}", retry=True)
    if isinstance(error, (httpx2.TransportError, ConnectionError)):
        return UploadFailure(f"cannot reach the hub ({type(error).__name__}): {_scrub(str(error), token)}", retry=True)
    if isinstance(error, (ValueError, FileNotFoundError)):
        return UploadFailure(f"{type(error).__name__}: {_scrub(str(error), token)}", retry=False)
    return UploadFailure(f"{type(error).__name__}: {_scrub(str(error), token)}", retry=True)


def configure_hub_client(timeout_s: float) -> None:
    """huggingface_hub's HTTP client has no timeout by default: a hung hub would hang us forever."""
    import httpx2
    from huggingface_hub.utils import _http

    def factory() -> httpx2.Client:
        client = _http.default_client_factory()
        client.timeout = httpx2.Timeout(timeout_s)
        return client

    _http.set_client_factory(factory)


class Hub:
    """The four hub calls of one stage upload (blocking; run in a thread)."""

    def __init__(self, private: bool = True) -> None:
        self.private = private

    def upload(self, repo: str, folder: Path, branch: str, tag: str, message: str, token: str) -> Uploaded:
        """Upload ``folder`` to hub repo ``repo`` (created if needed, private when ``self.private``) on branch ``branch``
        (created if needed), with commit ``message``, and tag the commit ``tag``; returns its page URL and commit id.
        Blocking; raises huggingface_hub's errors (HfHubHTTPError, ...) and OSError, which ``classify`` sorts.
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo, private=self.private, exist_ok=True)
        api.create_branch(repo, branch=branch, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=folder, revision=branch, commit_message=message)
        commit = str(getattr(info, "oid", "") or "")
        api.create_tag(repo, tag=tag, revision=commit or branch, tag_message=message, exist_ok=True)
        return Uploaded(url=f"{api.endpoint}/{repo}/tree/{branch}", commit=commit)


T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread: a hub call stuck in I/O never holds up the uploader's exit
    (the stage is still ``started`` in the log, so the next start uploads it again)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="tritter-upload-hub", daemon=True).start()
    return await future


class Snapshot(msgspec.Struct):
    """The uploader's fold of the log up to ``cursor`` (saved in HOME/upload.state)."""

    cursor: int = 0
    runs: dict[str, RunState] = {}


def export_path(stage: StageState) -> str:
    """The stage's export folder, relative to its run folder (the stage event's, else the convention)."""
    return stage.export_path or export_relpath(stage.stage)


def wants_upload(run: RunState, stage: StageState) -> bool:
    """Whether the fold says this stage still needs an upload (a pure function of the log)."""
    if not run.config.hf_user or stage.status != "completed":
        return False
    status = stage.upload_status
    if status is None:
        return run.config.upload
    if status in ("requested", "started"):
        return True
    return status == "failed" and stage.upload_will_retry


class Uploader(Sink[UploadSettings]):
    """The uploader sink (see the module docstring).

    ``source`` (the daemon it reports to) is required; ``hub`` and ``token`` replace the real
    hub client and token lookup (tests).
    """

    name = "tritter-upload"
    lock_file = "upload.lock"
    cursor_file = None  # the cursor lives in HOME/upload.state, with the fold
    settings_type = UploadSettings

    def __init__(
        self,
        layout: Layout,
        settings: UploadSettings | None = None,
        source: Target | None = None,
        *,
        hub: Hub | None = None,
        token: Callable[[], str | None] = find_token,
    ) -> None:
        if source is None:
            raise ValueError("the uploader needs a daemon to report to")
        super().__init__(layout, settings, source)
        self.hub = hub or Hub(private=not self.settings.public)
        self.token = token
        self.active: set[Job] = set()  # jobs being worked on (uploading or waiting to retry)
        self.reported: dict[Job, int] = {}  # job -> log head after our final report for it
        self.live = False
        self.connection = Connection(source)
        self.tasks: set[asyncio.Task[None]] = set()
        self.slot = asyncio.Semaphore(1)


    def describe(self) -> str:
        """The start-up log line: where the uploader's state file is."""
        return f"uploading stages (state {self.state_path})"

    # -- the snapshot (the fold and the cursor, in HOME/upload.state) ------------------------
    @property
    def state_path(self) -> Path:
        """``HOME/upload.state``: the snapshot of the fold and its cursor (JSON)."""
        return self.layout.home / "upload.state"

    def load_cursor(self) -> int:
        """Read ``HOME/upload.state`` into ``snapshot``; returns its cursor (0 when missing or unreadable: the log
        is folded from seq 1)."""
        try:
            self.snapshot = msgspec.json.decode(self.state_path.read_bytes(), type=Snapshot)
        except FileNotFoundError:
            self.snapshot = Snapshot()
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("%s is unreadable (%s); folding the log from seq 1", self.state_path, error)
            self.snapshot = Snapshot()
        return self.snapshot.cursor

    def save_progress(self) -> None:
        """Write the snapshot with the current cursor to ``HOME/upload.state`` atomically (blocking); OSError when
        it cannot."""
        self.snapshot.cursor = self.cursor
        atomic_write(self.state_path, msgspec.json.encode(self.snapshot))

    # -- events ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Set the hub client's per-request timeout (seconds) and warn once when no Hugging Face token is found."""
        configure_hub_client(self.settings.request_timeout_s)
        if find_token() is None:
            log.warning("no Hugging Face token (HF_TOKEN or `hf auth login`): uploads will fail until there is one")

    async def on_event(self, event: AnyEvent) -> None:
        """Fold ``event`` (in memory); once live, a stage or upload change may start an upload."""
        self.handle(event)

    def handle(self, event: AnyEvent) -> None:
        """Fold one event into the snapshot; when live, schedule what it made due."""
        fold(self.snapshot.runs, event)
        if self.live and not isinstance(event, StepEvent | PhaseEvent):
            self.schedule()

    def on_state(self, state: str) -> None:
        """Note whether the subscription is ``live``; on going live (caught up), schedule every upload the fold
        says is due."""
        log.info("bus: %s", state)
        self.live = state == LIVE
        if self.live:
            self.schedule()  # caught up: now the fold is the whole truth

    def pending(self) -> list[Job]:
        """The stages the fold says need an upload (``wants_upload``), minus those in flight and those whose final
        report has not come back yet."""
        jobs = []
        for run in self.snapshot.runs.values():
            for stage in run.stages:
                job = Job(run.run_id, stage.stage)
                if job in self.active or self.reported.get(job, 0) > stage.upload_seq:
                    continue  # ours, in flight; or our last report has not come back yet
                if wants_upload(run, stage):
                    jobs.append(job)
        return jobs

    def schedule(self) -> None:
        """Start one task per pending job (they take turns on a one-upload semaphore); needs a running loop."""
        for job in self.pending():
            self.active.add(job)
            task = asyncio.get_running_loop().create_task(self._work(job))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    # -- one stage ---------------------------------------------------------------------------
    async def report(self, event: UploadEvent) -> int:
        """Record ``event`` in the daemon's log; wait for the daemon rather than drop it."""
        while True:
            try:
                reply = await self.connection.request(Report(event=event))
                return reply.head
            except DaemonUnavailable as error:
                log.warning("cannot report %s upload of %s yet (%s); retrying", event.status, event.stage, error)
                await asyncio.sleep(REPORT_RETRY_S)
            except RequestFailed as error:
                log.error("tritterd refused the %s report for %s/%s: %s", event.status, event.run_id, event.stage, error)
                return 0

    def _stage(self, job: Job) -> tuple[RunState, StageState] | None:
        run = self.snapshot.runs.get(job.run_id)
        if run is None:
            return None
        for stage in run.stages:
            if stage.stage == job.stage:
                return run, stage
        return None

    async def _work(self, job: Job) -> None:
        try:
            await self._upload(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the uploader; the fold still says "not done"
            log.exception("upload of %s/%s crashed", job.run_id, job.stage)
        finally:
            self.active.discard(job)

    async def _upload(self, job: Job) -> None:
        found = self._stage(job)
        if found is None:
            return
        run, stage = found
        repo = f"{run.config.hf_user}/{run.run_name}"
        folder = self.layout.run_dir(run.run_id) / export_path(stage)
        tag = f"{stage.stage}-step{stage.end_step or 0}"
        message = (
            f"tritter {run.run_name}: stage {stage.stage} (step {stage.end_step}, "
            f"eval loss {stage.eval_loss_end if stage.eval_loss_end is not None else 'n/a'})"
        )

        def event(status: str, attempt: int, **fields: object) -> UploadEvent:
            return UploadEvent(run_id=run.run_id, stage=stage.stage, status=status, repo=repo,  # type: ignore[arg-type]
                               revision=stage.stage, attempt=attempt, **fields)  # type: ignore[arg-type]

        attempts = self.settings.attempts
        for attempt in range(1, attempts + 1):
            outcome: UploadFailure | None = None
            done: Uploaded | None = None
            async with self.slot:  # one stage at a time: bandwidth, and stages go up in order
                await self.report(event("started", attempt))
                log.info("uploading %s/%s (%s) to %s@%s, attempt %d", run.run_id, stage.stage, folder, repo, stage.stage, attempt)
                token = self.token()
                try:
                    if not export_is_complete(folder):
                        raise UploadFailure(f"export folder {folder} is missing or incomplete", retry=False)
                    if not token:
                        raise UploadFailure(
                            "no Hugging Face token: set HF_TOKEN or log in with `hf auth login`, then `tritterctl upload RUN`",
                            retry=False,
                        )
                    done = await in_thread(self.hub.upload, repo, folder, stage.stage, tag, message, token)
                except UploadFailure as failure:
                    outcome = failure
                except Exception as error:
                    outcome = classify(error, token)
            if outcome is None:
                assert done is not None
                log.info("uploaded %s/%s: %s", run.run_id, stage.stage, done.url)
                self.reported[job] = await self.report(event("completed", attempt, url=done.url, commit=done.commit))
                return
            retry = outcome.retry and attempt < attempts
            if retry:
                delay = backoff_delay(attempt, self.settings.backoff_s, self.settings.backoff_cap_s)
                log.warning("upload of %s/%s failed (attempt %d): %s; retrying in %.1f s",
                            run.run_id, stage.stage, attempt, outcome.reason, delay)
                await self.report(event("failed", attempt, error=outcome.reason, will_retry=True))
                await asyncio.sleep(delay)
                continue
            if outcome.retry:
                reason = f"gave up after {attempt} attempts: {outcome.reason}"
            else:
                reason = outcome.reason
            log.error("upload of %s/%s failed: %s", run.run_id, stage.stage, reason)
            self.reported[job] = await self.report(event("failed", attempt, error=reason, will_retry=False))
            return

    # -- shutdown ----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Cancel the uploads in flight (a stage still ``started`` is uploaded again on the next start)."""
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task

    async def close(self) -> None:
        """Close the control connection to the daemon."""
        await self.connection.close()


def main(argv: list[str] | None = None) -> int:
    """``tritter-upload [--home DIR | --connect URL ...] [--public] [--attempts N] [--backoff S] [--request-timeout S]``."""
    parser = sink_parser(Uploader, "Upload each completed stage of --upload runs to the Hugging Face hub.",
                         "the home whose runs/<id>/export/ folders to read")
    parser.add_argument("--public", action="store_true", help="create new hub repos public (default: private)")
    parser.add_argument("--attempts", type=bounded_int(1, 1000), default=MAX_ATTEMPTS, metavar="N", help=f"tries per upload (default {MAX_ATTEMPTS})")
    parser.add_argument("--backoff", type=bounded_float(0, 3600, "seconds"), default=BACKOFF_S, metavar="S", help=f"first retry delay, doubling, capped at {BACKOFF_CAP_S:g} s (default {BACKOFF_S:g})")
    parser.add_argument("--request-timeout", type=bounded_float(0, 3600, "seconds", low_open=True), default=REQUEST_TIMEOUT_S, metavar="S", help=f"per hub request (default {REQUEST_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    for noisy in ("httpx", "httpx2", "httpcore"):  # request lines are not ours to log
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return sink_main(Uploader, args, lambda: UploadSettings(attempts=args.attempts, backoff_s=args.backoff,
                                                            request_timeout_s=args.request_timeout, public=args.public))


if __name__ == "__main__":
    sys.exit(main())
