"""`make bench`: run every benchmark, then assemble docs/benchmarks.md from their fragments.

Each benchmark writes its own markdown fragment (docs/_bench_*.md) with the exact command
and machine; this script runs them in a fixed order and concatenates the fragments.
`--only NAME ...` runs a subset; `--assemble` only rebuilds docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PY = sys.executable

# name -> (fragment, command). Order = order in docs/benchmarks.md.
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "training": ("_bench_training.md", [PY, "benchmarks/train_bench.py"]),
    "deploy": ("_bench_deploy.md", [PY, "-m", "leafscout", "bench", "--markdown", "docs/_bench_deploy.md"]),
    "study": ("_bench_study.md", [PY, "-m", "leafscout", "study", "bn", "--out", "bench_out/bn_study",
                                  "--markdown", "docs/_bench_study.md"]),
    "robot": ("_bench_robot.md", [PY, "benchmarks/replay_bench.py"]),
    "telemetry": ("_bench_telemetry.md", [PY, "benchmarks/telemetry_bench.py", "--md", "docs/_bench_telemetry.md"]),
    "dashboard": ("_bench_dashboard.md", [PY, "benchmarks/dashboard_bench.py", "--md", "docs/_bench_dashboard.md"]),
}

HEADER = """# Benchmarks

Every figure below was measured by the command printed beside it, on the machine named
there. `make bench` re-runs them all (about an hour and a half on a 2-core CPU) and
rebuilds this page from the fragments each benchmark writes (`docs/_bench_*.md`);
`python benchmarks/run_all.py --only NAME` runs one. Where a target was missed, the
fragment says so.

"""


def assemble() -> Path:
    parts = [HEADER]
    for name, (fragment, _) in BENCHMARKS.items():
        path = DOCS / fragment
        if path.exists():
            parts.append(path.read_text().strip() + "\n\n")
        else:
            parts.append(f"## {name}\n\nNot measured yet: run `python benchmarks/run_all.py --only {name}`.\n\n")
    out = DOCS / "benchmarks.md"
    out.write_text("".join(parts).rstrip() + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    ap.add_argument("--assemble", action="store_true", help="only rebuild docs/benchmarks.md")
    args = ap.parse_args(argv)
    failed = []
    if not args.assemble:
        for name in args.only or list(BENCHMARKS):
            cmd = BENCHMARKS[name][1]
            print(f"==> {name}: {' '.join(cmd)}", flush=True)
            if subprocess.run(cmd, cwd=REPO).returncode != 0:
                failed.append(name)
    print(f"wrote {assemble()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
