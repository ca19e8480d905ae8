"""Hugging Face repo names, checked when a run starts rather than when its upload fails.

A run uploads each stage to ``HF_USER/RUN_NAME`` (branch = the stage).  The hub's own validator
(``huggingface_hub.utils.validate_repo_id``) decides what is valid: letters, digits, ``-``,
``_`` and ``.``, no ``--`` or ``..``, not starting or ending with ``-`` or ``.``, at most 96
characters for the whole id.  tritter allows run names of 100 characters, so a run that
uploads must fit the hub's rule, not only tritter's.
"""

from __future__ import annotations


def default_run_name(start: str, end: str) -> str:
    """The name tritterd gives a run started without ``--name``: ``tritter-START-END``."""
    return f"tritter-{start}-{end}"


def repo_id_problem(hf_user: str, run_name: str) -> str | None:
    """Why ``HF_USER/RUN_NAME`` cannot be a hub repo id, in one line; None when it can.

    Uses huggingface_hub's own validator (imported here, lazily: it is only needed when a run
    uploads).  The line names the flags to change.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo = f"{hf_user}/{run_name}"
    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        why = " ".join(str(error).split())  # the validator's reason, on one line
        return (f"--hf-user {hf_user!r} with --name {run_name!r} gives the Hugging Face repo id {repo!r}, "
                f"which the hub refuses: {why}")
    return None
