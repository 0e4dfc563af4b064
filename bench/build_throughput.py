"""Index build throughput on real clips, against the decode-only bound, side by side in one process.

What it measures (clips per second, median of ``--rounds`` rounds, the modes alternating):

(a) **build**: the whole ``build_index(BuildOptions(out=<fresh temp dir>, paths=[library], models="tiny",
    workers=W, progress=False))``: scan the folder, build the tiny CLIP model, decode in W pebble worker
    processes, embed, write SQLite + ``.npy`` shards, build and write the FAISS index and the manifest.
(b) **decode only**: the same scan and the same frames decoded by the same worker processes alone,
    ``list(decode_isolated(scan_folder(library), DecodeSettings(SegmentSettings(), image_size=32),
    workers=W, timeout_s=300))``. A build can never be faster than this, so (a)/(b) is the share of the
    decode bound that the build reaches (goal: >= 0.8).

What makes the comparison honest:

* Both modes start from the folder path and end with everything done: (a) includes the folder scan,
  the model build, the worker spawn and shutdown, every write and the FAISS build; (b) includes the
  same scan and the same worker spawn and shutdown (``decode_isolated`` starts a fresh pool per call in
  both modes). Both decode the same files with the same settings; the segment counts are checked equal.
* Imports are warm: a warm-up round of each mode runs first and is not counted, so torch, open_clip,
  faiss and the decoders are imported once in this process and the OS file cache holds the clips. The
  model *build* inside ``build_index`` still runs every round (a user pays it on every build); only the
  one-off import cost is excluded. That cold cost (first ``load_clip_model("tiny")`` in a fresh
  interpreter, mostly importing torch and open_clip) is measured in a subprocess and printed apart.
* Worker processes start with the ``spawn`` method, which re-imports the ``__main__`` module in each
  worker; this script imports nothing heavy at module level, so its workers start like the
  ``build-index`` command's do.
* The modes alternate (b, a, a', b, a, a', ... with a' the diagnostic mode below) so drifts in machine
  load hit all of them. The goal is judged on the ratio of medians; the ratio of best times (other
  processes only ever add time) and the per-round ratios are printed to make the noise visible.
* ``--repeat-library N`` indexes the clips N times (N sub-folders of symlinks in a temp folder, so
  paths and keys differ and every copy is really decoded): fixed costs (model build, worker spawn,
  FAISS build) are then spread over more clips, as in a real library. Several values can be given;
  the default runs N=1 and N=4.

A third, diagnostic mode ("uncapped"), on by default, runs the same build with the library's torch
thread cap switched off. The embedding runs in this process while the W decode workers are busy;
``build._cores_shared_with_workers`` gives torch only the cores the workers leave free
(``max(1, CPU count - W)`` threads) for the engine loop. The uncapped mode replaces that with a no-op,
so torch keeps its default of one intra-op thread per core, as before the cap: the difference is what
the cap buys (``--no-uncapped`` skips it; with a library without the cap the mode is left out).

After the timed rounds one extra, instrumented build per build mode (not counted) splits the build's
wall time into phases (model build, store open, time spent waiting for decoded clips, embedding, store
writes, finalize with the FAISS build) to show where the time over the decode bound goes
(``--no-profile`` skips them).

Run (from the repository root)::

    .venv/bin/python bench/build_throughput.py
    .venv/bin/python bench/build_throughput.py --clips ../shared/data/real_clips --workers 2 \
        --rounds 7 --repeat-library 1 4

Exits 0 whatever the ratio; the goal line says whether it was met.
"""

from __future__ import annotations

# Only the standard library at module level: spawned decode workers re-import this module.
import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIPS = REPO_ROOT.parent / "shared" / "data" / "real_clips"
GOAL = 0.8


def make_library(clips: Path, copies: int, parent: Path) -> Path:
    """``clips`` itself for one copy; otherwise a folder of ``copies`` sub-folders of symlinks to it."""
    if copies == 1:
        return clips
    root = Path(tempfile.mkdtemp(prefix=f"library-x{copies}-", dir=parent))
    from index_builder.sources import is_video_file

    files = sorted(p for p in clips.rglob("*") if p.is_file() and is_video_file(p))
    for copy in range(copies):
        folder = root / f"copy{copy:03d}"
        folder.mkdir()
        for path in files:
            (folder / path.name).symlink_to(path.resolve())
    return root


def run_build(library: Path, workers: int, parent: Path) -> tuple[float, int, int]:
    from index_builder.build import BuildOptions, build_index

    out_parent = Path(tempfile.mkdtemp(prefix="build-", dir=parent))
    try:
        started = time.perf_counter()
        summary = build_index(BuildOptions(out=out_parent / "index", paths=[library], models="tiny",
                                           workers=workers, progress=False))
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(out_parent, ignore_errors=True)
    return seconds, summary.counts["videos"], summary.counts["segments"]


def run_decode(library: Path, workers: int, image_size: int) -> tuple[float, int, int]:
    from index_builder.decode_worker import DecodeSettings
    from index_builder.local_engine import decode_isolated
    from index_builder.segmenter import SegmentSettings
    from index_builder.sources import SourceReport, scan_folder

    started = time.perf_counter()
    jobs = scan_folder(library, SourceReport())
    results = list(decode_isolated(jobs, DecodeSettings(segments=SegmentSettings(), image_size=image_size),
                                   workers=workers, timeout_s=300))
    seconds = time.perf_counter() - started
    return seconds, len(results), sum(decoded.num_segments for _, decoded, _ in results if decoded is not None)


def cold_model_load_seconds() -> float | None:
    """Wall time of the first ``load_clip_model('tiny')`` in a fresh interpreter (imports included)."""
    code = ("import time; t = time.perf_counter(); from retrieval.clip_models import load_clip_model; "
            "load_clip_model('tiny'); print(time.perf_counter() - t)")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              cwd=REPO_ROOT, check=True)
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


# -- instrumented build: where the time goes -----------------------------------------------------
@contextlib.contextmanager
def phase_timers():
    """Patch timing wrappers around the build's stages; yields the dict of accumulated seconds."""
    from index_builder import build, local_engine
    from index_builder.store import IndexStore
    from retrieval import clip_models

    totals: dict[str, float] = defaultdict(float)
    first_result: list[float] = []
    patches = []

    def patch(owner, name, label):
        original = getattr(owner, name, None)
        if original is None:  # a stage this version of the library does not have
            return

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - started

        patches.append((owner, name, original))
        setattr(owner, name, timed)

    original_decode = local_engine.decode_isolated

    def timed_decode(*args, **kwargs):
        called = time.perf_counter()
        stream = original_decode(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(stream)
            except StopIteration:
                return
            finally:
                totals["waiting for decoded clips"] += time.perf_counter() - started
            if not first_result:
                first_result.append(time.perf_counter() - called)
            yield item

    patches.append((local_engine, "decode_isolated", original_decode))
    local_engine.decode_isolated = timed_decode
    patch(clip_models, "load_clip_model", "model build (load_clip_model)")
    patch(clip_models.ClipEmbedder, "encode_segments", "embedding (encode_segments)")
    patch(IndexStore, "__init__", "store open (sqlite schema)")
    patch(IndexStore, "add_video", "store writes (add_video, incl. flushes)")
    patch(IndexStore, "flush", "  of which flush (npy + sqlite commit)")
    patch(build, "_finalize", "finalize (errors, FAISS, manifest)")
    patch(IndexStore, "load_vectors", "  of which load_vectors")
    patch(build, "build_faiss_index", "  of which build_faiss_index")
    patch(build, "serialize", "  of which serialize")
    patch(IndexStore, "compact", "  of which compact (merge shards)")
    patch(build, "tune_search_params", "  of which tune_search_params")
    try:
        yield totals, first_result
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


def profile_build(library: Path, workers: int, parent: Path, decode_seconds: float, title: str) -> None:
    with phase_timers() as (totals, first_result):
        seconds, clips, _ = run_build(library, workers, parent)
    print(f"  instrumented build, {title}: {seconds:.3f} s for {clips} clips "
          f"(decode-only median {decode_seconds:.3f} s, gap {seconds - decode_seconds:+.3f} s)")
    if first_result:
        print(f"    {'first decoded clip after (spawn + 1st decode)':<48}{first_result[0]:8.3f} s")
    accounted = 0.0
    for label in ("model build (load_clip_model)", "store open (sqlite schema)", "waiting for decoded clips",
                  "embedding (encode_segments)", "store writes (add_video, incl. flushes)",
                  "  of which flush (npy + sqlite commit)", "finalize (errors, FAISS, manifest)",
                  "  of which load_vectors", "  of which compact (merge shards)", "  of which build_faiss_index",
                  "  of which tune_search_params", "  of which serialize"):
        if label not in totals and "of which" in label and label != "  of which flush (npy + sqlite commit)":
            continue
        value = totals.get(label, 0.0)
        if not label.startswith("  "):
            accounted += value
        print(f"    {label:<48}{value:8.3f} s  {100 * value / seconds:5.1f}%")
    print(f"    {'other (scan, settings, final flush, close)':<48}{seconds - accounted:8.3f} s  "
          f"{100 * (seconds - accounted) / seconds:5.1f}%")


@contextlib.contextmanager
def thread_cap(enabled: bool):
    """The library as it is (``enabled``), or with its torch thread cap for the engine loop made a no-op."""
    from index_builder import build

    original = getattr(build, "_cores_shared_with_workers", None)
    if enabled or original is None:
        yield
        return
    build._cores_shared_with_workers = lambda embedder, workers: contextlib.nullcontext()
    try:
        yield
    finally:
        build._cores_shared_with_workers = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help=f"folder of clips [default: {DEFAULT_CLIPS}]")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode worker processes [CPU count]")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per mode (after one warm-up) [7]")
    parser.add_argument("--repeat-library", type=int, nargs="+", default=[1, 4], metavar="N",
                        help="index the clips N times (symlinked copies); several values run one after another [1 4]")
    parser.add_argument("--no-uncapped", action="store_true",
                        help="skip the diagnostic mode: the build with the library's torch thread cap switched off")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary indexes go [system temp]")
    parser.add_argument("--no-profile", action="store_true", help="skip the instrumented builds")
    args = parser.parse_args()

    clips = args.clips.resolve()
    if not clips.is_dir():
        print(f"error: {clips}: no such folder (give --clips DIR)", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.workers < 1 or min(args.repeat_library) < 1:
        print("error: --rounds, --workers and --repeat-library must be at least 1", file=sys.stderr)
        return 2

    cold = cold_model_load_seconds()
    import faiss
    import numpy
    import torch

    from index_builder import build
    from retrieval.clip_models import load_clip_model

    image_size = load_clip_model("tiny").image_size  # warms the imports; the model is built again per build
    variant = not args.no_uncapped and hasattr(build, "_cores_shared_with_workers")
    default_threads = torch.get_num_threads()
    print("build throughput: full build_index (tiny model) vs decode-only bound, same process, alternating")
    print(f"machine: nproc={os.cpu_count()}  python {sys.version.split()[0]}  torch {torch.__version__} "
          f"(intra-op threads {default_threads})  faiss {faiss.__version__}  numpy {numpy.__version__}")
    print(f"clips: {clips}  workers: {args.workers}  rounds: {args.rounds} (+1 warm-up), median reported")
    if variant:
        print(f"diagnostic mode 'uncapped': the same build with the library's torch thread cap switched off "
              f"(cap: {max(1, (os.cpu_count() or 1) - args.workers)} thread(s) while decoding; "
              f"uncapped: {default_threads})")
    elif not args.no_uncapped:
        print("this library has no torch thread cap (build._cores_shared_with_workers): no 'uncapped' mode")
    if cold is not None:
        print(f"cold start, not in the timings: first load_clip_model('tiny') in a fresh interpreter "
              f"{cold:.2f} s (imports)")

    modes = ["decode", "build"] + (["variant"] if variant else [])
    scratch = Path(tempfile.mkdtemp(prefix="storyreel-bench-", dir=args.tmp))
    rows = []
    try:
        for copies in args.repeat_library:
            library = make_library(clips, copies, scratch)

            def run(mode, library=library):
                if mode == "decode":
                    return run_decode(library, args.workers, image_size)
                with thread_cap(mode != "variant"):
                    return run_build(library, args.workers, scratch)

            for mode in modes:  # warm-up, not counted
                run(mode)
            times = {mode: [] for mode in modes}
            counts = {}
            for _ in range(args.rounds):
                for mode in modes:
                    seconds, n_clips, n_segments = run(mode)
                    times[mode].append(seconds)
                    counts.setdefault(mode, (n_clips, n_segments))
                    if counts[mode] != (n_clips, n_segments) or counts[mode] != counts["decode"]:
                        print(f"warning: {mode} saw {n_clips} clips / {n_segments} segments, "
                              f"decode-only {counts['decode']}", file=sys.stderr)
            n_clips, n_segments = counts["decode"]
            medians = {mode: statistics.median(values) for mode, values in times.items()}
            rows.append((copies, n_clips, n_segments, medians, times))
            print(f"\nN={copies}: {n_clips} clips, {n_segments} segments")
            for mode in modes:
                label = {"decode": "decode-only", "build": "build", "variant": "uncapped"}[mode]
                print(f"  {label:<12} rounds: {' '.join(f'{t:.3f}' for t in times[mode])} s")
            if not args.no_profile:
                profile_build(library, args.workers, scratch, medians["decode"], "as the library is")
                if variant:
                    with thread_cap(False):
                        profile_build(library, args.workers, scratch, medians["decode"], "uncapped (diagnostic)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("\nclips/s = clips / median wall seconds; ratio = build clips/s / decode-only clips/s")
    header = (f"{'N':>3} {'clips':>5} {'segs':>5} | {'decode s':>8} {'clips/s':>8} | {'build s':>8} {'clips/s':>8} "
              f"{'ratio':>6}")
    if variant:
        header += f" | {'uncapped':>8} {'clips/s':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for copies, n_clips, n_segments, med, _ in rows:
        line = (f"{copies:>3} {n_clips:>5} {n_segments:>5} | {med['decode']:>8.3f} {n_clips / med['decode']:>8.2f} | "
                f"{med['build']:>8.3f} {n_clips / med['build']:>8.2f} {med['decode'] / med['build']:>6.3f}")
        if variant:
            line += (f" | {med['variant']:>8.3f} {n_clips / med['variant']:>8.2f} "
                     f"{med['decode'] / med['variant']:>6.3f}")
        print(line)
    print()
    for copies, _, _, med, times in rows:
        ratio = med["decode"] / med["build"]
        best = min(times["decode"]) / min(times["build"])
        per_round = " ".join(f"{d / b:.2f}" for d, b in zip(times["decode"], times["build"]))
        print(f"ratio build/decode-only clips/s (N={copies}): {ratio:.3f} (medians; best-of {best:.3f})  "
              f"goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}  (per round: {per_round})")
    if variant:
        for copies, _, _, med, times in rows:
            best = min(times["decode"]) / min(times["variant"])
            print(f"diagnostic ratio without the torch thread cap (N={copies}): "
                  f"{med['decode'] / med['variant']:.3f} (medians; best-of {best:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
