"""``tritter-ckpt``: compress, decompress, verify and describe checkpoint files.

    tritter-ckpt compress FILE [-o OUT] [--delta-from PREV]
    tritter-ckpt decompress FILE [-o OUT]
    tritter-ckpt verify FILE
    tritter-ckpt info FILE [--json]

Exit status (one convention for every tritter command, docs/operations.md): 0 on success;
2 for any error, with one line on stderr and no output file left behind: the input is corrupt,
truncated, missing, not a checkpoint, or a delta whose base is missing or different; the output
exists and --force was not given; a file cannot be read or written; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tritter.protocol.cli_args import bounded_int
from tritter.clients.outputs import OutputRefused, check_output_file
from tritter.formats import codec, sniff
from tritter.formats.checkpoints import SUFFIX, is_compressed, raw_name
from tritter.formats.safetensors_stream import verify_content
from tritter.protocol.exitcodes import EXIT_ERROR, EXIT_INTERRUPTED, OneLineParser
from tritter.protocol.oserrors import os_error_line

EXIT_BAD_INPUT = EXIT_ERROR  # kept: the name other modules import
MAX_THREADS = 256


def _kind(path: Path, want: str | None = None) -> str:
    """The file's format by content (``sniff.TZST`` or ``sniff.SAFETENSORS``), whatever its name.

    Raises CodecError naming what the file is instead when it is neither checkpoint format
    (or, with ``want``, not that one).
    """
    kind = sniff.kind(path)
    if not kind:
        raise codec.CodecError(f"{path}: not a checkpoint: {sniff.describe(path)}")
    if want == sniff.SAFETENSORS and kind == sniff.TZST:
        raise codec.CodecError(f"{path}: already compressed (a .safetensors.tzst file)")
    if want == sniff.TZST and kind == sniff.SAFETENSORS:
        raise codec.CodecError(f"{path}: not compressed (a plain .safetensors file); nothing to decompress")
    return kind


def _compress(args: argparse.Namespace) -> int:
    src = Path(args.file)
    _kind(src, sniff.SAFETENSORS)
    out = Path(args.output) if args.output else src.with_name(src.name + SUFFIX)
    base = Path(args.delta_from) if args.delta_from else None
    check_output_file(out, args.force, src, base)  # the rule of every command's output (clients/outputs.py)
    args.out_path = out  # named by an error that carries no file name (a full disk)
    if base is not None:
        _kind(base)
    if verify_content(src) is False:  # bit-exact compression would keep the damage, under a new name
        raise codec.CodecError(f"{src}: content checksum mismatch (corrupt checkpoint); not compressed")
    if base is not None and base.resolve().parent != out.resolve().parent:
        print(f"tritter-ckpt: warning: {base.name} is not next to {out}; decompress looks for the base there", file=sys.stderr)
    header = codec.compress_file(src, out, base=base, threads=args.threads, max_ratio=args.max_ratio)
    size = header["original"]["size"]
    packed = out.stat().st_size
    kind = f"delta of {header['base']['name']}" if header.get("base") else "full"
    print(f"{out}: {size / 1e6:.2f} MB -> {packed / 1e6:.2f} MB ({size / packed:.3f}x, {kind})")
    return 0


def _decompress(args: argparse.Namespace) -> int:
    src = Path(args.file)
    _kind(src, sniff.TZST)
    default = raw_name(src) if is_compressed(src) else src.name + ".safetensors"  # x.bin -> x.bin.safetensors
    out = Path(args.output) if args.output else src.with_name(default)
    check_output_file(out, args.force, src)
    args.out_path = out  # named by an error that carries no file name (a full disk)
    size = codec.decompress_file(src, out)  # streams; every digest checked before the rename; keeps src's permissions
    print(f"{out}: {size / 1e6:.2f} MB")
    return 0


def _verify(args: argparse.Namespace) -> int:
    path = Path(args.file)
    compressed = _kind(path) == sniff.TZST
    if compressed:
        header = codec.read_header(path)
        data = codec.read_safetensors_bytes(path, check_tensors=True)
        n = sum(1 for s in header["segments"] if "dtype" in s)
        what = f"{n} tensors and the file sha256 match the header"
        if header.get("base"):
            what += f" (delta, chain depth {header.get('chain', 1)}: decoded from {len(codec.base_chain(path))} files)"
    else:
        data = codec.read_safetensors_bytes(path)
        _, spans, meta = codec.parse_safetensors(data)
        if spans and len(data) != spans[-1].end:
            raise codec.CodecError(f"{path}: {len(data) - spans[-1].end} stray bytes after the last tensor")
        intact = verify_content(data)
        if intact is False:
            raise codec.CodecError(f"{path}: content checksum mismatch (corrupt checkpoint)")
        what = f"{len(spans)} tensors match the content digest" if intact else f"{len(spans)} tensors, well-formed (no content digest to check)"
    sha = hashlib.sha256(data).hexdigest()
    # the content digest of a tritter checkpoint inside a .tzst is checked too, when present
    if compressed and verify_content(data) is False:
        raise codec.CodecError(f"{path}: content checksum mismatch (the original checkpoint was corrupt)")
    print(f"{path}: OK, {what}; sha256 {sha}")
    return 0


def _info(args: argparse.Namespace) -> int:
    path = Path(args.file)
    rows: list[dict[str, Any]] = []
    if _kind(path) == sniff.TZST:
        header = codec.read_header(path)
        packed_total = path.stat().st_size
        for s in header["segments"]:
            if "dtype" not in s:
                continue
            size = s["end"] - s["start"]
            packed = sum(d["n"] + (1 if d["m"] == "const" else 0) for d in s["streams"])
            rows.append({"name": s["name"], "dtype": s["dtype"], "shape": s["shape"], "bytes": size, "compressed": packed,
                         "ratio": round(size / max(packed, 1), 3),
                         # version 1 marked a delta tensor; version 2 marks each XOR frame ("x")
                         "delta": bool(s.get("delta")) or any(d.get("x") for d in s["streams"])})
        summary = {
            "file": str(path),
            "format": f"{header['format']}/{header['version']}",
            "original": header["original"],
            "compressed_bytes": packed_total,
            "ratio": round(header["original"]["size"] / packed_total, 4),
            "base": header.get("base"),
            "chain": header.get("chain", 0),
            "meta": header.get("meta", {}),
        }
    else:
        data = codec.read_safetensors_bytes(path)
        _, spans, _ = codec.parse_safetensors(data)
        rows = [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "bytes": s.end - s.start} for s in spans]
        summary = {"file": str(path), "format": "safetensors", "original": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    summary["tensors"] = rows
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{path}: {summary['format']}, {summary['original']['size']:,} bytes, sha256 {summary['original']['sha256']}")
    if "ratio" in summary:
        kind = (f"delta of {summary['base']['name']} (chain depth {summary['chain']}: decoded from {summary['chain'] + 1} files)"
                if summary["base"] else "full (keyframe)")
        print(f"compressed {summary['compressed_bytes']:,} bytes, ratio {summary['ratio']:.3f}x, {kind}")
        if summary["meta"]:
            print("meta " + json.dumps(summary["meta"], sort_keys=True))
    dtypes: dict[str, int] = {}
    for r in rows:
        dtypes[r["dtype"]] = dtypes.get(r["dtype"], 0) + r["bytes"]
    print(f"{len(rows)} tensors: " + ", ".join(f"{d} {b / 1e6:.2f} MB" for d, b in sorted(dtypes.items())))
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        line = f"  {r['name']:<{width}}  {r['dtype']:<5} {shape:<14} {r['bytes']:>12,}"
        if "compressed" in r:
            line += f"  {r['ratio']:>7.3f}x" + ("  delta" if r["delta"] else "")
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``tritter-ckpt`` argument parser: subcommands compress, decompress, verify and info, each with its
    handler as ``func``."""
    parser = OneLineParser(prog="tritter-ckpt", description="Lossless compression of safetensors checkpoints (.safetensors.tzst).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compress", help="FILE.safetensors -> FILE.safetensors.tzst (the input is kept)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: FILE.tzst)")
    p.add_argument("--delta-from", metavar="PREV", help="store as a delta of PREV (.safetensors or .tzst; keep it next to OUT)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT")
    p.add_argument("--threads", type=bounded_int(1, MAX_THREADS, "a thread count"), help="worker threads (default: up to 4)")
    p.add_argument("--max-ratio", action="store_true",
                   help="exponent coding on AdamW moments too: 1-3%% smaller, ~2x slower to decompress (for archives)")
    p.set_defaults(func=_compress)
    p = sub.add_parser("decompress", help="FILE.safetensors.tzst -> FILE.safetensors, byte-identical to the original")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: FILE without .tzst)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=_decompress)
    p = sub.add_parser("verify", help="decode and check every tensor's digest and the whole file's sha256 against the index")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_verify)
    p = sub.add_parser("info", help="tensors, dtypes, sizes and ratio, from the index alone (verify checks the contents)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``tritter-ckpt`` command line; returns the exit status.

    0 on success (also on a closed output pipe), ``EXIT_ERROR`` (2) with one line on stderr for a corrupt or
    unreadable input, a refused output (exists without ``--force``, or names an input) or any OSError,
    ``EXIT_INTERRUPTED`` (130) on Ctrl-C or SIGTERM (a temp output is removed first); a bad flag exits 2
    through the parser.
    """
    args = build_parser().parse_args(argv)
    # SIGTERM (systemd, `kill`) unwinds like Ctrl-C, so a half-written output's temp file is removed
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        return int(args.func(args))
    except codec.CodecError as exc:
        print(f"tritter-ckpt: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputRefused as exc:  # before ValueError (its base): not about the input, exit 2 like every error
        print(f"tritter-ckpt: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyError, TypeError, ValueError) as exc:  # a well-formed but wrong header, met by info/verify
        print(f"tritter-ckpt: error: {args.file}: corrupt header ({exc})", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # before OSError: `tritter-ckpt info F | head` is not an error
        return 0
    except OSError as exc:  # plain words and a path (the output's when the error names none), never [Errno N]
        print(f"tritter-ckpt: error: {os_error_line(exc, getattr(args, 'out_path', None) or args.file)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
