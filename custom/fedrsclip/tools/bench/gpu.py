"""`make bench-gpu` (`python -m fedrsclip.tools.bench.gpu`): the GPU figures of issue 14 in one command.

1. `fedrsclip bench` on CUDA (the image encoder under fp16 autocast, OT in fp32), written to bench.json;
2. the paper-scale job (`fedrsclip bench --paper-scale 10`: ViT-B/16 with random weights from a local file, Table
   I's 10-site UC Merced partition) in the simulator with `-gpu`, the prompt-learning text encoder under autocast
   (`model.text_precision`, bf16 by default; OT stays fp32), written to paper-scale-10/;
3. both, with the GPU's name, in bench-gpu.json (atomically), whose summary is the last stdout line.

Stops with exit code 2 and a message where torch sees no CUDA device (nothing is measured on the CPU instead), or
where --out holds files it did not write (checked first: nothing of the user's is overwritten).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...atomic import atomic_write_json, to_json
from ...data.cli import positive_int
from .common import DEFAULT_IMAGES, is_bench_output


def check_gpu_out(out: Path, sites: int) -> None:
    """`out` may be new, or an earlier output of this command: its bench.json and bench-gpu.json earlier ones, its
    paper-scale-N/ as `paper.check_paper_out` allows. ValueError naming --out otherwise."""
    from .paper import check_paper_out

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose another --out")
    summary = out / "bench-gpu.json"
    for path, ours in ((out / "bench.json", is_bench_output), (summary, _gpu_summary)):
        if path.exists() and not ours(path):
            raise ValueError(
                f"--out {out} holds a {path.name} that is not an earlier output of make bench-gpu: choose another "
                "--out (nothing was written)"
            )
    check_paper_out(out / f"paper-scale-{sites}", sites, "--out")


def _gpu_summary(path: Path) -> bool:
    try:
        return {"gpu", "bench", "text_precision"} <= set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedrsclip.tools.bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="workspaces/bench-gpu", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp16"),
        default="bf16",
        help="the text encoder's autocast in the simulator job (default: %(default)s)",
    )
    parser.add_argument("--gpu", default="0", help="the simulator's -gpu list (default: %(default)s)")
    parser.add_argument(
        "--sites", type=positive_int, default=10, help="sites of the simulator job (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="its rounds (default: %(default)s)")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="UC Merced images (default: %(default)s)")
    args = parser.parse_args(argv)
    from .paper import check_paper_options

    try:  # before anything runs (the bench takes minutes): nothing of the user's is overwritten
        check_paper_options(args.sites, None, args.rounds, args.gpu)
        check_gpu_out(Path(args.out).expanduser().absolute(), args.sites)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available():
        print(
            "error: make bench-gpu needs an NVIDIA GPU that torch can use, and torch.cuda.is_available() is False "
            f"here (torch {torch.__version__}, CUDA build {torch.version.cuda}). Run it on a machine with a GPU "
            "and its driver; `make bench` gives the CPU figures.",
            file=sys.stderr,
        )
        return 2
    from .paper import format_paper, run_paper_scale
    from .run import run_bench
    from .table import format_table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu_name = torch.cuda.get_device_name(0)
    bench = run_bench(device="cuda", out=str(out / "bench.json"), images=args.images)
    print(format_table(bench), flush=True)
    paper = run_paper_scale(
        args.sites,
        out / f"paper-scale-{args.sites}",
        threads=args.sites,
        rounds=args.rounds,
        images=args.images,
        gpu=args.gpu,
        overrides=["model.device=cuda", f"model.text_precision={args.precision}"],
    )
    print(format_paper(paper), flush=True)
    summary = {
        "gpu": gpu_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "text_precision": args.precision,
        "bench": bench,
        f"paper_scale_{args.sites}": paper,
    }
    atomic_write_json(out / "bench-gpu.json", summary)
    print(f"written: {out / 'bench-gpu.json'}", flush=True)
    print(
        to_json(
            {
                "gpu": gpu_name,
                "text_precision": args.precision,
                **{
                    k: bench.get(k)
                    for k in (
                        "step_speedup_vs_reference",
                        "feature_images_per_s_project",
                        "task_start_s_vitb16",
                        "site_peak_rss_mb_train_vitb16",
                    )
                },
                "paper_round_s_after_first": paper.get("round_s_after_first"),
                "paper_flare_share": paper.get("flare_overhead_fraction"),
                "paper_status": paper.get("status"),
            },
            indent=None,
        ),
        flush=True,
    )
    ok = paper.get("simulator_exit_code") == 0 and paper.get("status") == "finished"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
