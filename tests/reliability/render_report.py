"""Turn the reliability suite's figures (JSON lines) into the markdown table of docs/reliability.md.

    TRITTER_RELIABILITY_REPORT=/tmp/rel.jsonl .venv/bin/python -m pytest tests/reliability
    .venv/bin/python tests/reliability/render_report.py /tmp/rel.jsonl
"""

from __future__ import annotations

import json
import sys

KEYS = {
    "a_kill9_daemon": ("kill_count", "recoveries", "max_loss_delta", "events", "duration_s"),
    "b_kill9_worker": ("kill_count", "recoveries", "max_loss_delta", "events", "duration_s"),
    "c_damaged_tails": ("recoveries", "resumes_logged", "max_loss_delta", "events", "duration_s"),
    "d_fuzz_control": ("messages", "msgs_per_s", "steps_during_fuzz", "fuzz_s", "duration_s"),
    "e_stalled_subscriber": ("stall_s", "speed_ratio", "caught_up_events", "duration_s"),
    "f_disk_full": ("status", "reason", "previous_intact", "resumed_exactly", "early_resume_lost", "max_loss_delta", "duration_s"),
    "g_daemon_race": ("refusals", "events", "duration_s"),
}


def main(path: str) -> None:
    print("| test | mode | figures |")
    print("|---|---|---|")
    for line in open(path):
        row = json.loads(line)
        keys = KEYS.get(row["test"], tuple(k for k in row if k not in ("test", "mode", "seed")))
        figures = "; ".join(f"{k}={row[k]}" for k in keys if k in row)
        print(f"| {row['test']} | {row['mode']} | {figures} |")
    print()
    print("Details (kill points, damages, per-kind message counts):")
    print()
    for line in open(path):
        row = json.loads(line)
        extra = {k: v for k, v in row.items() if isinstance(v, (list, dict))}
        if extra:
            print(f"- `{row['test']}`: `{json.dumps(extra)}`")


if __name__ == "__main__":
    main(sys.argv[1])
