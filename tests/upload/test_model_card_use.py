"""What a transformers user meets first in an export: the model card's snippet runs as printed
(local folder and hub repo), and generate(max_new_tokens=...) warns about nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from test_export_hf import _model

from tritter.daemon.engine.export import StageCard, export_stage


def _snippets(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_card_snippet_runs_on_the_local_folder_without_warnings(tmp_path: Path) -> None:
    card = StageCard(run_id="20260101-000000-abcd", run_name="demo", stage="tiny", hf_user="someone")
    folder = export_stage(_model(), "tiny", tmp_path, card)
    readme = (folder / "README.md").read_text()
    assert "https://github.com/" not in readme and "PATH_OR_REPO" not in readme  # no placeholders
    gen = json.loads((folder / "generation_config.json").read_text())
    assert "max_length" not in gen

    hub, local = _snippets(readme)
    assert 'from_pretrained("someone/demo", revision="tiny")' in hub  # the uploaded repo, branch = stage
    assert json.dumps(str(folder)) in local and "revision" not in local
    # Run the local snippet exactly as printed, with every warning shown.
    result = subprocess.run([sys.executable, "-W", "always", "-c", local], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin",  # transformers at its default verbosity: what a user sees
                                                            "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("Once upon a time"), result.stdout
    for noise in ("max_length", "max_new_tokens", "attention mask", "pad_token_id"):
        assert noise not in result.stderr, result.stderr[-3000:]


def test_card_without_a_hub_user_shows_only_the_folder(tmp_path: Path) -> None:
    folder = export_stage(_model(), "tiny", tmp_path, StageCard(run_id="r", run_name="demo", stage="tiny"))
    snippets = _snippets((folder / "README.md").read_text())
    assert len(snippets) == 1 and json.dumps(str(folder)) in snippets[0]
