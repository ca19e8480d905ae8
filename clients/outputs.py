"""The one rule for every command that writes a file or folder the user named: an existing
output is never overwritten without ``--force``/``-f`` (docs/operations.md, "Exit status": exit
2 and one line), and an output never names one of the command's inputs, even with ``--force``.

Used by ``tritter-ckpt`` (compress/decompress ``-o``), ``tritterctl tokenizer train -o`` and
``tritterctl keygen``.  The checks run before any work, so a refused command touches nothing.
"""

from __future__ import annotations

from pathlib import Path

from tritter.formats.pathkind import special_path_problem


class OutputRefused(ValueError):
    """The output exists (without ``--force``), is an input, or has no folder to go in.
    ``str(error)`` is one line for the user."""


def _refuse_inputs(out: Path, inputs: tuple[Path | None, ...]) -> None:
    for src in inputs:
        if src is not None and (out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src))):
            raise OutputRefused(f"{out} is an input of this command; choose another output")


def check_output_file(out: Path, force: bool, *inputs: Path | None, create_parent: bool = False, label: str = "-o") -> None:
    """Refuse writing the file ``out``: when it names one of ``inputs`` (even with ``force``:
    the command promises to keep its input), when it is a folder, FIFO or device (``--force``
    replaces a file, nothing else), when it exists and ``force`` is False, or when its folder is
    missing and ``create_parent`` is False (a typo in ``-o`` should not create folders).
    ``label`` starts the special-path line (``-o PATH is a folder, not a file``).
    Raises OutputRefused (one line)."""
    out = Path(out)
    _refuse_inputs(out, inputs)
    if problem := special_path_problem(out, label, folder_ok=False):
        raise OutputRefused(problem)
    if out.exists() and not force:
        raise OutputRefused(f"{out} exists (use --force to overwrite)")
    if not create_parent and not out.parent.is_dir():
        raise OutputRefused(f"{out.parent}: no such folder")


def check_output_folder(out: Path, force: bool, *inputs: Path | None) -> None:
    """Refuse writing into the folder ``out``: when it is a file, when it names one of
    ``inputs``, or when it exists and is not empty and ``force`` is False (an empty folder holds
    nothing to lose).  A missing folder is created by the command.  Raises OutputRefused."""
    out = Path(out)
    _refuse_inputs(out, inputs)
    if out.exists() and not out.is_dir():  # a file, a FIFO, a device: never replaced by a folder
        raise OutputRefused(f"{out} exists and is not a folder; the output is a folder")
    if out.is_dir() and not force and any(out.iterdir()):
        raise OutputRefused(f"{out} exists and is not empty (use --force to overwrite)")
