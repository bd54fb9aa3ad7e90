"""The `fastdiff` command line: `fastdiff demo` (the 25-Gaussian sampler demo)."""
from __future__ import annotations

import argparse
import sys


def _add_demo(sub) -> None:
    """Register `fastdiff demo`."""
    from fastdiff.demo import SAMPLERS

    p = sub.add_parser("demo", help="sample the SIDDM 25-Gaussian grid with the fused DDPM / DDIM samplers",
                       description="Sample the 25-Gaussian grid of SIDDM/DDGAN with the exact ε-model "
                                   "through fastdiff's fused DDPM-1000, DDIM-50 and DDIM-10 samplers; print "
                                   "mode coverage and the share of samples within 3 std, and write "
                                   "toy_samples.png and toy_metrics.json.")
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--n", type=int, default=4000, help="samples per sampler (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="Philox seed of the initial and step noise (default: %(default)s)")
    p.add_argument("--samplers", default=",".join(SAMPLERS),
                   help=f"comma-separated subset of {','.join(SAMPLERS)} (default: all)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    """Run the demo with the parsed arguments; returns the exit status."""
    from fastdiff.demo import run_demo

    names = tuple(s.strip() for s in args.samplers.split(",") if s.strip())
    run_demo(args.out, n=args.n, seed=args.seed, sampler_names=names)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="fastdiff",
                                     description="fastdiff: fused kernels for diffusion models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the `fastdiff` script; argv defaults to sys.argv[1:]. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except ValueError as e:
        parser.error(str(e))
    return 2


if __name__ == "__main__":
    sys.exit(main())
