"""Corpus ingestion benchmark (issue 13): memory, speed and sampler cost of the token-shard path.

    python bench/data.py [--quick] [--json]

Figures (the last printed line is one JSON object):

- ``rss_ratio``: peak RSS of a whole ``load_token_data`` (corpus hash + tokenization into shards;
  one process, the tokenizer's threads included) on a 10x corpus / on a 1x corpus (400 MB /
  40 MB; ``--quick`` 20 MB / 2 MB).  Target <= 1.2: memory does not grow with the corpus.
  ``oneline_rss_mb``: the same for one file that is a single line (50 MB; quick 5 MB).
- ``speed_ratio``: tritter's MB/s (file on disk -> shards on disk, end to end) / the MB/s of
  ``tokenizers.Tokenizer.encode_batch`` on the same text already in memory (the same 64k-char
  pieces), both on every core, measured alternately in one run (best of ``--pairs``).  Target
  >= 0.9.  ``speed_ratio_vs_fast``: the same against ``encode_batch_fast`` (no offsets), which is
  what tritter calls -- most of the margin over ``encode_batch`` is that choice.  ``mb_s_1_worker`` / ``mb_s_all_workers``: tritter with RAYON_NUM_THREADS=1 / unset.
- ``sampler_share``: time the training loop waits in ``Batches.next()`` (with the trainer's
  prefetch; ``..._no_prefetch`` without) for the 100m preset's batch shape (32 x 1024), read from
  shards, while a simulated step (sleep) runs between batches, / the 100m step time of a GPU, estimated as 6 x params x tokens (+ attention,
  PaLM appendix B) / (989 TFLOP/s bf16 x 50% MFU) -- a fast step, so a pessimistic share (there is
  no GPU here to time one).  Target < 1%.

Each measurement runs in its own subprocess (a clean peak RSS); the corpora are generated in a
temporary folder from the embedded corpus (each 4 MB file a varied copy) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILE_MB = 4
H200_BF16_FLOPS = 989e12
ASSUMED_MFU = 0.5


def make_corpus(folder: Path, mb: float, one_line: bool = False) -> Path:
    """A folder of ~4 MB text files (or one single-line file) totalling ``mb`` MB, from the
    embedded corpus; every file differs (a numbered prefix on each paragraph) so nothing is a
    byte-for-byte repeat of another."""
    from tritter.daemon.engine.data import default_corpus_text

    base = default_corpus_text()
    folder.mkdir(parents=True, exist_ok=True)
    target = int(mb * 1e6)
    if one_line:
        path = folder / "line.txt"
        with open(path, "w", encoding="utf-8") as f:
            written = 0
            flat = base.replace("\n", " ")
            while written < target:
                part = flat[: target - written]
                f.write(part)
                written += len(part.encode())
        return path
    paragraphs = base.split("\n\n")
    written, index = 0, 0
    while written < target:
        size = min(FILE_MB * 1_000_000, target - written)
        parts, n, k = [], 0, 0
        while n < size:
            para = f"[{index}.{k}] " + paragraphs[(index * 7919 + k) % len(paragraphs)]
            parts.append(para)
            n += len(para.encode()) + 2
            k += 1
        data = "\n\n".join(parts).encode()[:size].decode("utf-8", "ignore")
        (folder / f"part-{index:05d}.txt").write_text(data, encoding="utf-8")
        written += len(data.encode())
        index += 1
    return folder


# --------------------------------------------------------------------------- children


def child_tokenize(corpus: str, cache: str) -> dict:
    from tritter.daemon.engine.data import load_token_data

    started = time.perf_counter()
    data = load_token_data(Path(cache), Path(corpus))
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (Path(corpus).rglob("*") if Path(corpus).is_dir() else [Path(corpus)]) if p.is_file())
    return {"seconds": seconds, "bytes": size, "tokens": len(data.train) + len(data.heldout),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_baseline(corpus: str) -> dict:
    from tritter.daemon.engine.data import load_tokenizer
    from tritter.formats.corpus import CorpusReader, list_corpus

    pieces = [text for text, _ in CorpusReader(list_corpus(Path(corpus)))]
    size = sum(len(p.encode()) for p in pieces)
    tok = load_tokenizer()
    started = time.perf_counter()
    encodings = tok.encode_batch(pieces, add_special_tokens=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(e.ids) for e in encodings)
    del encodings
    started = time.perf_counter()
    tok.encode_batch_fast(pieces, add_special_tokens=False)  # no offsets: what tritter calls
    fast = time.perf_counter() - started
    return {"seconds": seconds, "fast_seconds": fast, "bytes": size, "tokens": tokens}


def child_sampler(corpus: str, cache: str, iterations: int) -> dict:
    import torch

    from tritter.daemon.engine.data import Batches, load_token_data
    from tritter.daemon.engine.model import LlamaForCausalLM, count_parameters
    from tritter.recipe.presets import get_preset

    preset = get_preset("100m")
    data = load_token_data(Path(cache), Path(corpus))
    shape = preset.shape
    with torch.device("meta"):
        params = count_parameters(LlamaForCausalLM(shape))
    tokens = preset.train.batch_size * preset.train.seq_len
    # PaLM (Chowdhery et al. 2022, appendix B): 6N + 12 L H Q T FLOPs per token for forward+backward.
    flops = tokens * (6 * params + 12 * shape.num_layers * shape.num_heads * shape.head_dim * preset.train.seq_len)
    step = flops / (H200_BF16_FLOPS * ASSUMED_MFU)
    out: dict = {"step_ms_estimate": step * 1e3, "params": params}
    for prefetch in (False, True):
        batches = Batches(data.train, preset.train.batch_size, preset.train.seq_len, seed=0, prefetch=prefetch)
        batches.next()  # the epoch permutation, once per epoch
        waited = cpu = 0.0
        for _ in range(iterations):
            t0, c0 = time.perf_counter(), time.process_time()
            x, y = batches.next()  # what the training loop waits for
            waited += time.perf_counter() - t0
            cpu += time.process_time() - c0
            time.sleep(step)  # the GPU step: the training thread waits on the device meanwhile
        key = "prefetch" if prefetch else "sync"
        out[f"sampler_ms_{key}"] = waited / iterations * 1e3
        out[f"sampler_cpu_ms_{key}"] = cpu / iterations * 1e3
    out["batch_shape"] = list(x.shape)
    return out


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench child {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpora (2/20 MB, 5 MB line, 2 MB speed)")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--pairs", type=int, default=0, help="baseline/tritter speed pairs (default 1 quick, 2 full)")
    parser.add_argument("--sizes", metavar="SMALL,BIG,LINE,SPEED",
                        help="corpus sizes in MB instead of the defaults (40,400,50,20; quick 2,20,5,2)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        result = {"tokenize": lambda: child_tokenize(*rest), "baseline": lambda: child_baseline(*rest),
                  "sampler": lambda: child_sampler(rest[0], rest[1], int(rest[2]))}[mode]()
        print(json.dumps(result))
        return
    small, big, line_mb, speed_mb = (2, 20, 5, 2) if args.quick else (40, 400, 50, 20)
    if args.sizes:
        small, big, line_mb, speed_mb = (float(v) for v in args.sizes.split(","))
    pairs = args.pairs or (1 if args.quick else 2)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    tmp = Path(tempfile.mkdtemp(prefix="tritter-bench-data-"))
    try:
        speed_corpus = make_corpus(tmp / "speed", speed_mb)
        baseline, fast, ours = [], [], []
        for i in range(pairs):
            b = run_child(["baseline", str(speed_corpus)])
            o = run_child(["tokenize", str(speed_corpus), str(tmp / f"cache-speed-{i}")])
            baseline.append(b["bytes"] / b["seconds"] / 1e6)
            fast.append(b["bytes"] / b["fast_seconds"] / 1e6)
            ours.append(o["bytes"] / o["seconds"] / 1e6)
            say(f"speed pair {i}: encode_batch {baseline[-1]:.2f} MB/s, encode_batch_fast {fast[-1]:.2f} MB/s, "
                f"tritter {ours[-1]:.2f} MB/s")
        one = run_child(["tokenize", str(speed_corpus), str(tmp / "cache-one")], {"RAYON_NUM_THREADS": "1"})
        mb_s_1 = one["bytes"] / one["seconds"] / 1e6
        say(f"tritter with 1 worker: {mb_s_1:.2f} MB/s")
        sampler = run_child(["sampler", str(speed_corpus), str(tmp / "cache-speed-0"), "100"])
        say(f"sampler {sampler['sampler_ms_prefetch']:.3f} ms waited per 100m batch with prefetch "
            f"({sampler['sampler_ms_sync']:.3f} ms without), step estimate {sampler['step_ms_estimate']:.1f} ms")

        rss = {}
        for mb in (small, big):
            corpus = make_corpus(tmp / f"rss-{mb}", mb)
            rss[mb] = run_child(["tokenize", str(corpus), str(tmp / f"cache-rss-{mb}")])
            say(f"{mb} MB corpus: peak RSS {rss[mb]['peak_rss_mb']:.0f} MB, {rss[mb]['bytes'] / rss[mb]['seconds'] / 1e6:.2f} MB/s")
            shutil.rmtree(corpus)
            shutil.rmtree(tmp / f"cache-rss-{mb}")
        line = make_corpus(tmp / "line", line_mb, one_line=True)
        oneline = run_child(["tokenize", str(line), str(tmp / "cache-line")])
        say(f"{line_mb} MB single line: peak RSS {oneline['peak_rss_mb']:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "rss_ratio": round(rss[big]["peak_rss_mb"] / rss[small]["peak_rss_mb"], 3),
        "rss_small_mb": round(rss[small]["peak_rss_mb"], 1),
        "rss_big_mb": round(rss[big]["peak_rss_mb"], 1),
        "corpus_mb": [small, big],
        "oneline_rss_mb": round(oneline["peak_rss_mb"], 1),
        "oneline_mb": line_mb,
        "speed_ratio": round(max(ours) / max(baseline), 3),
        "encode_batch_mb_s": round(max(baseline), 3),
        "encode_batch_fast_mb_s": round(max(fast), 3),
        "speed_ratio_vs_fast": round(max(ours) / max(fast), 3),
        "mb_s_all_workers": round(max(ours), 3),
        "mb_s_1_worker": round(mb_s_1, 3),
        "workers": os.cpu_count(),
        "speed_corpus_mb": speed_mb,
        "sampler_ms": round(sampler["sampler_ms_prefetch"], 4),
        "sampler_ms_no_prefetch": round(sampler["sampler_ms_sync"], 4),
        "sampler_cpu_ms_no_prefetch": round(sampler["sampler_cpu_ms_sync"], 4),
        "step_ms_estimate": round(sampler["step_ms_estimate"], 2),
        "sampler_share": round(sampler["sampler_ms_prefetch"] / sampler["step_ms_estimate"], 5),
        "sampler_share_no_prefetch": round(sampler["sampler_ms_sync"] / sampler["step_ms_estimate"], 5),
        "load_average": round(os.getloadavg()[0], 1),
        "quick": args.quick,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
