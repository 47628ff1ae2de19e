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
    "training": ("_bench_training.md", [PY, "benchmarks/train_bench.py", "--out-root", "bench_out/training"]),
    "deploy": ("_bench_deploy.md", [PY, "-m", "leafscout", "bench", "vision/reference_bundle", "--seconds", "2",
                                    "--json", "bench_out/deploy_bench.json", "--markdown", "bench_out/deploy_bench.md"]),
    "field": ("_bench_field.md", [PY, "benchmarks/field_bench.py"]),
    "study": ("_bench_study.md", [PY, "-m", "leafscout", "study", "bn", "--out", "bench_out/bn_study", "--no-progress"]),
    "robot": ("_bench_robot.md", [PY, "benchmarks/replay_bench.py", "--rows", "6", "--out", "bench_out/robot",
                                  "--condition-seeds", "1"]),
    "boxes": ("_bench_boxes.md", [PY, "benchmarks/box_bench.py", "--compare", "b20c375"]),
    "telemetry": ("_bench_telemetry.md", [PY, "benchmarks/telemetry_bench.py", "--out", "bench_out/telemetry.json"]),
    "dashboard": ("_bench_dashboard.md", [PY, "benchmarks/dashboard_bench.py", "--md", "docs/_bench_dashboard.md"]),
    "dashboard-pg": ("_bench_dashboard_pg.md", [PY, "benchmarks/dashboard_bench.py", "--postgres",
                                                "--md", "docs/_bench_dashboard_pg.md"]),
    "station-pg": ("_bench_station_pg.md", [PY, "benchmarks/station_pg_bench.py", "--records", "20000",
                                            "--md", "docs/_bench_station_pg.md"]),
}

HEADER = """# Benchmarks

Every figure below was measured by the command printed beside it, on the machine named
in its section: a 2-core x86_64 dev box without GPU. The field-classifier, deploy and robot
sections were measured on 2026-12-05 on an Intel Xeon with AMX shared with other jobs (the robot
section gives CPU-time figures beside wall clock) for the committed reference bundle; the training
section on 2026-12-03 on the same kind of machine, otherwise idle (its PlantVillage-only runs, plus
the field recipe's step times of 2026-12-05); the study section on 2026-11-25 on a 2-core AMD EPYC shared with other
jobs; the telemetry and dashboard sections date their own runs. `make bench` re-runs every benchmark (about two hours
on a 2-core CPU) and rebuilds this page from the sections in `docs/_bench_*.md`: the
training, robot and dashboard benchmarks rewrite their section themselves; the deploy,
study and telemetry runs write JSON/markdown under `bench_out/` from which their sections
were written. `python benchmarks/run_all.py --only NAME` runs one; `--assemble` only
rebuilds this page. Where a target was missed, the section says so.

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
