"""End to end: a real ``--upload --hf-user alice`` run trained by tritterd, pushed by tritter-upload
to the hub double, and the pushed folder loads in transformers with the trained weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers  # a declared test dependency: missing means a broken install, not a skip
from conftest import Daemon, ctl, events
from hub_double import HubDouble
from test_uploader import TOKEN, UploaderProcess, final, uploads, uploads_after_request, wait_for, wait_live

from tritter.daemon.engine.checkpoint import list_checkpoints, load_checkpoint
from tritter.formats.export_layout import export_is_complete
from tritter.daemon.engine.model import LlamaForCausalLM
from tritter.recipe.presets import get_preset


@pytest.fixture
def hub_e2e() -> Iterator[HubDouble]:
    double = HubDouble(token=TOKEN).start()
    yield double
    double.stop()


def test_upload_end_to_end(home: Path, daemon: Daemon, hub_e2e: HubDouble, tmp_path: Path) -> None:
    hub = hub_e2e
    daemon.start()
    run_id = ctl(home, "start", "--start", "tiny", "--end", "tiny", "--steps", "4", "--upload", "--hf-user", "alice",
                 "--name", "e2e").stdout.strip()
    assert ctl(home, "wait", run_id, "--timeout", "240").returncode == 0
    run_dir = home / "runs" / run_id
    stage_done = [e for e in events(home) if e["kind"] == "stage" and e["status"] == "completed"][-1]
    model = LlamaForCausalLM(get_preset("tiny").shape)
    model.load_state_dict(load_checkpoint(list_checkpoints(run_dir)[-1]).model_state)  # the stage-end weights
    model.eval()
    # The trainer exports each stage itself; the test never writes the folder.
    assert stage_done["export_path"] == "export/tiny"
    assert export_is_complete(run_dir / "export" / "tiny")

    up = UploaderProcess(home, hub)
    try:
        evs = wait_for(home, lambda e: final(e, "tiny"), "upload of the trained stage", proc=up)
        done = final(evs, "tiny")
        assert done["status"] == "completed" and done["run_id"] == run_id and done["repo"] == "alice/e2e"
        assert "upload completed" in ctl(home, "status", run_id).stdout
        # What the hub received is a loadable model with the trained weights.
        pushed = tmp_path / "pushed"
        pushed.mkdir()
        for name, data in hub.repos["alice/e2e"].files["tiny"].items():
            (pushed / name).write_bytes(data)
        hf = transformers.AutoModelForCausalLM.from_pretrained(pushed).eval()
        ids = torch.randint(0, 8192, (1, 32), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
        assert "eval loss" in (pushed / "README.md").read_text()
        # A daemon restart and an uploader restart push nothing again: once the new uploader is
        # live, an explicit request is the only upload (see uploads_after_request).
        up.stop()
        daemon.terminate()
        daemon.start()
        assert hub.count("commit") == 1 and len(uploads(home)) == 2
        up = UploaderProcess(home, hub)
        wait_live(up)
        after = uploads_after_request(home, up, "tiny", run_id)
        assert [e["status"] for e in after] == ["requested", "started", "completed"], up.stderr()
        assert hub.count("commit") == 2
    finally:
        up.stop()
