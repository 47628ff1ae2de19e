"""How fast the dashboard answers with a big survey in the station database.

Fills a station database with a survey of ``--plants`` plant records (default 100,000)
through the real ``StationDB`` API, serves the dashboard with uvicorn on loopback and
times real HTTP requests (keep-alive, HTTP Basic auth):

* field page, *cold*: one new plant is stored before each request, so every request
  recomputes all aggregates (the worst case while a robot is reporting);
* field page, *warm*: nothing changed since the last request (aggregates cached);
* gallery page, summary JSON, the map's plant points (one zoomed-in view), and the
  full CSV / GeoJSON downloads;
* 50 concurrent viewers (one kept-alive connection each) on the field page;
* a viewer's field page while 8 threads guess passwords for another account;
* ``leafscout report`` as a separate process: wall time, CPU time and peak RSS.

``--postgres`` runs the same on a PostgreSQL server started on loopback for the run
(``leafscout.station.pg_server``, default durability) instead of a SQLite file.

    .venv/bin/python benchmarks/dashboard_bench.py --plants 100000 --md docs/_bench_dashboard.md
    .venv/bin/python benchmarks/dashboard_bench.py --plants 100000 --postgres --md docs/_bench_dashboard_pg.md
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from leafscout.link.records import PlantRecord
from leafscout.station.db import open_db  # noqa: E402
from leafscout.station.web.app import create_app  # noqa: E402
from leafscout.station.web.auth import add_user  # noqa: E402
from leafscout.station.web.sample_data import fill_survey  # noqa: E402
from leafscout.station.web.server import WebServer  # noqa: E402

TARGET_MS = 10.0  # field page and its API, p50 on a kept-alive connection (issue #16)
CONCURRENT_P99_MS = 300.0
REPORT_S, REPORT_MB = 5.0, 150.0


def _get(conn: http.client.HTTPConnection, path: str, headers: dict) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    ms = (time.perf_counter() - t0) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}: {body[:200]!r}")
    return ms, response.status, len(body)


def _stats(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ordered[max(0, round(0.95 * len(ms)) - 1)], 1),
            "p99_ms": round(ordered[max(0, round(0.99 * len(ms)) - 1)], 1), "max_ms": round(max(ms), 1)}


def _report_process(db_path: Path | str, out: Path) -> dict:
    """``leafscout report`` in its own process: wall, CPU and peak RSS (from the kernel's rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "leafscout", "report", "--db", str(db_path), "--survey", "big-survey",
                    "--out", str(out)], check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "max_rss_mb": round(after.ru_maxrss / 1024, 1)}


def _concurrent(web, path: str, headers: dict, viewers: int, requests_each: int) -> dict:
    """``viewers`` threads, each with its own kept-alive connection, all asking at once."""
    times: list[float] = []
    lock, start = threading.Lock(), threading.Barrier(viewers)

    def viewer() -> None:
        conn = http.client.HTTPConnection(web.host, web.port, timeout=120)
        _get(conn, path, headers)
        start.wait()
        mine = [_get(conn, path, headers)[0] for _ in range(requests_each)]
        conn.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=viewer) for _ in range(viewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _stats(times)


def _while_guessing(web, path: str, headers: dict, repeats: int, guessers: int = 8) -> tuple[dict, int]:
    """A viewer's requests while ``guessers`` threads send wrong passwords for another account."""
    stop = threading.Event()
    answers: list[int] = []
    wrong = {"Authorization": "Basic " + base64.b64encode(b"victim:not-the-password").decode()}

    def guess() -> None:
        conn = http.client.HTTPConnection(web.host, web.port, timeout=120)
        while not stop.is_set():
            conn.request("GET", "/api/robots", headers=wrong)
            response = conn.getresponse()
            response.read()
            answers.append(response.status)
        conn.close()

    threads = [threading.Thread(target=guess) for _ in range(guessers)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # let the guessing get going (and meet its lockout)
        conn = http.client.HTTPConnection(web.host, web.port, timeout=120)
        ms = [_get(conn, path, headers)[0] for _ in range(repeats)]
        conn.close()
    finally:
        stop.set()
        for t in threads:
            t.join()
    return _stats(ms), sum(code == 401 for code in answers)


def _many_surveys(workdir: Path, headers: dict, surveys: int, repeats: int, pg=None) -> dict:
    """The survey list when the station holds ``surveys`` surveys (one plant each)."""
    path = pg.database("many") if pg is not None else workdir / "many.db"
    with open_db(path) as db:
        db.insert_records([(f"robot-1:{'0' * 32}:{i + 1}",
                            PlantRecord("robot-1", f"survey-{i:05d}", i, 1_780_000_000.0 + i, "Tomato___healthy", 4,
                                        0.9, 3, row=0, metre=1.0), None) for i in range(surveys)])
        with WebServer(create_app(db, workdir / "users.json", rate_per_s=1000, burst=1000), "127.0.0.1", 0) as web:
            conn = http.client.HTTPConnection(web.host, web.port, timeout=60)
            _, _, size = _get(conn, "/", headers)
            ms = [_get(conn, "/", headers)[0] for _ in range(repeats)]
            conn.close()
    return {**_stats(ms), "surveys": surveys, "page_kb": round(size / 1024, 1)}


def _db_mb(db_path: Path | str) -> float:
    if isinstance(db_path, Path):
        return round(db_path.stat().st_size / 2**20, 1)
    import psycopg

    with psycopg.connect(db_path) as conn:
        return round(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20, 1)


def run(plants: int, repeats: int, workdir: Path, pg=None) -> dict:
    """``pg``: a started ``leafscout.station.pg_server.PostgresServer`` to run on instead of SQLite."""
    rows = 50
    per_row = plants // rows
    db_path = pg.database("big") if pg is not None else workdir / "station.db"
    t0 = time.perf_counter()
    with open_db(db_path) as db:
        # Incidence rises across the field, 0 % to 49 %: realistic spread of diseased rows.
        truth = fill_survey(db, "big-survey", row_incidence=[r / 100 for r in range(rows)], plants_per_row=per_row,
                            uncertain_per_row=per_row // 40, progress=True)
    fill_s = time.perf_counter() - t0
    token = add_user(workdir / "users.json", "bench", "viewer")
    headers = {"Authorization": "Basic " + base64.b64encode(f"bench:{token}".encode()).decode()}

    result: dict = {"plants": truth.plants, "rows": rows, "thumbnails": truth.thumbnails,
                    "fill_s": round(fill_s, 1), "db_mb": _db_mb(db_path),
                    "database": "PostgreSQL" if pg is not None else "SQLite"}
    result["report"] = _report_process(db_path, workdir / "report")
    add_user(workdir / "users.json", "victim", "viewer")
    with open_db(db_path) as db:
        t0 = time.perf_counter()
        app = create_app(db, workdir / "users.json", rate_per_s=1000, burst=1000)
        with WebServer(app, "127.0.0.1", 0) as web:
            result["startup_ms"] = round((time.perf_counter() - t0) * 1000)  # includes reading every record once
            conn = http.client.HTTPConnection(web.host, web.port, timeout=60)
            _get(conn, "/surveys/big-survey", headers)  # first request: warms the scrypt cache and imports
            cold = []
            for i in range(repeats):
                extra = PlantRecord("robot-1", "big-survey", 10_000_000 + i, 1_780_000_000.0 + i,
                                    "Tomato___Late_blight", 0, 0.9, 3, row=i % rows, metre=1.0, lat=52.0, lon=5.0)
                db.insert_record(f"robot-1:bench{i}", extra)
                cold.append(_get(conn, "/surveys/big-survey", headers)[0])
            warm = [_get(conn, "/surveys/big-survey", headers)[0] for _ in range(repeats)]
            gallery = [_get(conn, "/surveys/big-survey/gallery", headers)[0] for _ in range(repeats)]
            summary = [_get(conn, "/api/surveys/big-survey/summary", headers)[0] for _ in range(repeats)]
            view = "/api/surveys/big-survey/plants?row_min=10&row_max=14&metre_min=100&metre_max=160"
            points = [_get(conn, view, headers)[0] for _ in range(repeats)]
            csv_ms, _, csv_bytes = _get(conn, "/surveys/big-survey/plants.csv", headers)
            geo_ms, _, geo_bytes = _get(conn, "/surveys/big-survey/observations.geojson", headers)
            report_ms, _, report_bytes = _get(conn, "/surveys/big-survey/report.html", headers)
            conn.close()
            crowd = _concurrent(web, "/surveys/big-survey", headers, viewers=50, requests_each=max(2, repeats // 5))
            guessed, wrong_checked = _while_guessing(web, "/surveys/big-survey", headers, repeats)
    result["survey_list"] = _many_surveys(workdir, headers, 20_000, repeats, pg)
    result.update({
        "field_page_cold": _stats(cold), "field_page_warm": _stats(warm), "gallery_page": _stats(gallery),
        "summary_json": _stats(summary), "map_points_json": _stats(points),
        "concurrent_50": crowd, "while_guessing": guessed, "wrong_passwords_checked": wrong_checked,
        "csv_download": {"ms": round(csv_ms), "mb": round(csv_bytes / 2**20, 1)},
        "geojson_download": {"ms": round(geo_ms), "mb": round(geo_bytes / 2**20, 1)},
        "report_html": {"ms": round(report_ms), "mb": round(report_bytes / 2**20, 2)},
        "load_average": round(os.getloadavg()[0], 1),
    })
    result["meets_target"] = {
        "field page and API p50 <= 10 ms": max(result["field_page_warm"]["p50_ms"],
                                               result["summary_json"]["p50_ms"]) <= TARGET_MS,
        "50 viewers p99 <= 300 ms": crowd["p99_ms"] <= CONCURRENT_P99_MS,
        "report <= 5 s and <= 150 MB": result["report"]["wall_s"] <= REPORT_S
        and result["report"]["max_rss_mb"] <= REPORT_MB,
        "viewer p50 within 2x of idle while guessing": guessed["p50_ms"] <= 2 * result["field_page_warm"]["p50_ms"],
    }
    return result


def markdown(r: dict, command: str) -> str:
    def line(name: str, s: dict) -> str:
        return f"| {name} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['max_ms']} |"

    rep = r["report"]
    return "\n".join([
        "## Dashboard (station web pages)" + (" on PostgreSQL" if r.get("database") == "PostgreSQL" else ""),
        "",
        f"Command: `{command}`  ",
        f"Machine: 2-core x86_64 CPU, no GPU (the dev box), Python {platform.python_version()}, "
        f"shared with other jobs (1-minute load average {r['load_average']} at the end of the run).  ",
        f"Date: {date.today().isoformat()}",
        "",
        f"Station database: one survey of {r['plants']:,} plant records in {r['rows']} rows, "
        f"{r['thumbnails']:,} thumbnails ({r['db_mb']} MB {r.get('database', 'SQLite')}, filled in {r['fill_s']} s through `StationDB`). "
        "Real HTTP requests to uvicorn on loopback, keep-alive, HTTP Basic auth.",
        "",
        "| request | n | p50 ms | p95 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        line("field page, cold (a new plant stored before each request: it is read, the statistics rebuilt)",
             r["field_page_cold"]),
        line("field page, warm (nothing new since the last request)", r["field_page_warm"]),
        line("gallery page (HTML listing 48 thumbnails)", r["gallery_page"]),
        line("summary JSON", r["summary_json"]),
        line("map plant points JSON (5 rows x 60 m, zoomed-in view)", r["map_points_json"]),
        line("field page, 50 concurrent viewers (own connection each)", r["concurrent_50"]),
        line(f"field page while 8 threads guess another account's password ({r['wrong_passwords_checked']} "
             "guesses answered 401, the rest 429)", r["while_guessing"]),
        line(f"survey list with {r['survey_list']['surveys']:,} surveys (50 a page, "
             f"{r['survey_list']['page_kb']} KB)", r["survey_list"]),
        "",
        f"Dashboard start-up, which reads every stored record once to build the running aggregates: "
        f"{r['startup_ms']} ms.",
        "",
        f"Full downloads: CSV {r['csv_download']['mb']} MB in {r['csv_download']['ms']} ms; "
        f"GeoJSON {r['geojson_download']['mb']} MB in {r['geojson_download']['ms']} ms; "
        f"self-contained HTML report {r['report_html']['mb']} MB in {r['report_html']['ms']} ms.",
        "",
        f"`leafscout report` (its own process, the three files, observations checked): {rep['wall_s']} s wall, "
        f"{rep['cpu_s']} s CPU, peak RSS {rep['max_rss_mb']} MB. On this shared machine wall time exceeds CPU "
        "time by whatever the other jobs take.",
        "",
        "Targets (issue #16): " + "; ".join(f"{k}: **{'met' if v else 'NOT met'}**"
                                           for k, v in r["meets_target"].items()) + ".",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plants", type=int, default=100_000, help="plant records in the survey (default 100000)")
    parser.add_argument("--repeats", type=int, default=20, help="requests per measured page (default 20)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--md", type=Path, help="write the markdown fragment here (docs/_bench_dashboard.md)")
    parser.add_argument("--postgres", action="store_true",
                        help="run on a PostgreSQL server started for the run instead of a SQLite file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dashboard_bench_") as tmp, contextlib.ExitStack() as stack:
        pg = None
        if args.postgres:
            from leafscout.station.pg_server import PostgresServer

            pg = stack.enter_context(PostgresServer(fast=False))
        result = run(args.plants, args.repeats, Path(tmp), pg)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        command = "python benchmarks/dashboard_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.md.write_text(markdown(result, command.strip()))
    return 0 if all(result["meets_target"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
