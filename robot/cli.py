"""`leafscout simulate`, `run`, `detect` and `config check`: a field in a computer, the robot loop over any
camera, its per-frame vision on still images, and its settings file."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["register", "build_sinks"]

EXIT_RECORDING_DAMAGED = 3  # `run`: the report was written, but frames of the recording were lost (docs/robot.md)
_UNSET = object()  # a `run` flag not given on the command line: --config's value, else the flag's default
_RUN_DEFAULTS: dict[str, Any] = {}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="render a simulated field survey (video, NMEA log, truth) from leaf images",
        description="Compose leaves onto soil along crop rows and film the robot driving them: writes "
        "field.avi (640x480 MJPG), gps.nmea, field.json (row geometry) and truth.json to --out.",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--leaves", type=Path, default=None,
                   help="PlantVillage-layout folder of real leaves (default: synthetic leaves)")
    p.add_argument("--split", type=Path, default=None,
                   help="split.json of a training run, or a deploy bundle directory: plant only leaves of "
                   "--part of its split (images the model never saw)")
    p.add_argument("--part", default="test", choices=("train", "val", "test"),
                   help="which part of --split to plant (default test)")
    p.add_argument("--per-class", type=int, default=40, help="real leaves loaded per class, at most (default 40)")
    p.add_argument("--rows", type=int, default=3, help="crop rows (default 3)")
    p.add_argument("--row-length", type=float, default=6.0, help="row length in metres (default 6)")
    p.add_argument("--lines", type=int, default=3, help="staggered plant lines per row (default 3: ~10 leaves in view)")
    p.add_argument("--spacing", type=float, default=0.48, help="plant spacing along a line, metres (default 0.48)")
    p.add_argument("--speed", type=float, default=1.0, help="robot speed, m/s (default 1)")
    p.add_argument("--fps", type=float, default=20.0, help="camera frame rate (default 20)")
    p.add_argument("--video-quality", type=int, default=75,
                   help="MJPG quality of field.avi, 1-100 (default 75); lower it to mimic a harsher camera")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same field and video")
    p.add_argument("--conditions", default="", metavar="LIST",
                   help="the field's hard cases, comma-separated and combinable: soil speckled|gravel|chroma; "
                   "clods, stones, straw, grass, seedlings, weeds; touching|overlapping, bare; exposure, "
                   "white-balance, shadows, blur, noise (docs/localizer.md)")
    p.set_defaults(func=_simulate)

    p = subparsers.add_parser(
        "run",
        help="run the robot: find, classify, count and map diseased plants from a camera or recording",
        description="Camera sources: a video file, a folder of images, /dev/videoN or an index, an rtsp:// "
        "URL, a GStreamer pipeline (contains '!'), a named pipe (FIFO) or sim[:rows=2,length=4,...]. Recordings "
        "are replayed frame by frame and give the same report on every run (all keys but timing_ms). Exit 0 "
        "done, 2 error, 3 done but the recording was damaged (frames lost, truncated or undecodable: the "
        "report's camera counters say how many; docs/robot.md).",
    )
    p.add_argument("--config", type=Path, default=None,
                   help="robot.toml settings file (localizer, white balance, tracker, and any of the flags below; "
                   "a flag given here wins); see robot/robot.example.toml")
    p.add_argument("--camera", help="camera source (see above); required unless --config names one")
    p.add_argument("--bundle", type=Path, default=None,
                   help="deploy bundle directory, or a bundles directory of `leafscout bundle install` (default: "
                   "the installed current bundle, else the packaged reference bundle)")
    p.add_argument("--gps", default=None,
                   help="GPS: a pyserial URL (/dev/ttyUSB0, a pty, loop://) or a recorded NMEA file; "
                   "the simulator source needs none")
    p.add_argument("--baud", type=int, default=115200,
                   help="GPS serial speed (default 115200: 10 Hz GGA+RMC does not fit in 9600)")
    p.add_argument("--gps-max-age", type=float, default=0.5, metavar="S",
                   help="a GPS fix older than this is stale: plants get no position from it, flagged, and a "
                   "live run fills it in from the fixes around the dropout once they return (default 0.5)")
    p.add_argument("--status-file", type=Path, default=None,
                   help="where the run keeps its status for `leafscout status` (default for live runs: "
                   "status.json in the state directory)")
    p.add_argument("--field", type=Path, default=None,
                   help="field.json row geometry to map GPS to row and metre (default: field.json beside "
                   "a recorded --gps file, if there is one)")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--db", type=Path, default=None,
                   help="survey SQLite file; a restarted robot continues the survey (default: in memory)")
    p.add_argument("--survey", default="survey-1", help="survey id; an existing one is continued (default survey-1)")
    p.add_argument("--robot-id", default="robot-1", help="this robot's id in records (default robot-1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for onnxruntime and OpenCV (default: all cores)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="use the bundle's int8 model (--no-int8: fp32; default: int8 when the bundle has one)")
    p.add_argument("--providers", default=None,
                   help="comma-separated onnxruntime providers in order of preference (default: CUDA and "
                   "TensorRT when present, else CPU)")
    p.add_argument("--abstain-below", type=float, default=None,
                   help="confidence under which a plant is 'uncertain' (default: the bundle's threshold)")
    p.add_argument("--crop-fill", type=int, default=None, metavar="GREY",
                   help="paint the soil around each leaf this grey level (0-255) before classifying, for "
                   "models that learned a photo backdrop (default: classify the crop as filmed)")
    link = p.add_argument_group("telemetry (records go through a durable outbox to the station)")
    link.add_argument("--serial", default=None, help="telemetry radio/serial port URL (/dev/ttyUSB0, socket://h:p, a pty)")
    link.add_argument("--serial-baud", type=int, default=115200, help="telemetry serial speed (default 115200)")
    link.add_argument("--mqtt", default=None,
                      help="telemetry MQTT broker URL mqtt://user@host:port (password: --password-file or "
                      "$LEAFSCOUT_MQTT_PASSWORD, never on the command line)")
    link.add_argument("--password-file", type=Path, default=None, help="file with this robot's MQTT password")
    link.add_argument("--state-dir", type=Path, default=None,
                      help="the robot's state directory, home of its outbox (default $LEAFSCOUT_STATE_DIR/ROBOT, "
                      "else ~/.local/state/leafscout/ROBOT)")
    link.add_argument("--outbox", type=Path, default=None,
                      help="telemetry outbox SQLite file (default: outbox.db in the state directory)")
    link.add_argument("--outbox-limit", type=int, default=100_000,
                      help="records the outbox holds at most; beyond it the oldest heartbeats, then plants, then row "
                      "summaries are dropped, counted and reported in heartbeats (default 100000)")
    link.add_argument("--hmac-key-file", type=Path, default=None,
                      help="this robot's HMAC key file (leafscout keys new ROBOT at the station)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", dest="live", action="store_true", default=None,
                      help="process the newest frame, dropping frames when behind (default for cameras)")
    mode.add_argument("--replay", dest="live", action="store_false",
                      help="process every frame of a recording (default for files, folders, sim)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--truth", type=Path, default=None,
                   help="a simulated field's truth.json: print how the counts and incidence compare")
    p.add_argument("--annotate", type=Path, default=None, metavar="OUT.avi",
                   help="write the overlay video of the run (boxes, track ids, labels, vegetation outline)")
    for action in p._actions:  # the first action of a dest gives its default, as in argparse (--live before --replay)
        if action.dest not in ("help", "config"):
            _RUN_DEFAULTS.setdefault(action.dest, action.default)
    p.set_defaults(func=_run, **{dest: _UNSET for dest in _RUN_DEFAULTS})

    p = subparsers.add_parser(
        "detect",
        help="the robot's per-frame vision on still images: boxes, classes, health, vegetation masks",
        description="Find plant candidates in each image, classify each, and write OUT.json: a list with one "
        'entry per image, {"image", "width", "height", "detections": [{"box": [x0, y0, x1, y1], "class", '
        '"health", "confidence"}]}; health is healthy, diseased, uncertain or background.',
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--bundle", type=Path, default=None,
                   help="deploy bundle directory (default: the packaged reference bundle)")
    p.add_argument("--json", type=Path, required=True, metavar="OUT.json", help="detections of every image")
    p.add_argument("--masks", type=Path, default=None, metavar="DIR",
                   help="write one PNG per image (same stem): 255 = vegetation, 0 = other, at the image's size")
    p.add_argument("--annotate", type=Path, default=None, metavar="DIR",
                   help="write each image with its boxes, labels and the vegetation outline drawn")
    p.add_argument("--config", type=Path, default=None,
                   help="robot.toml: its [localizer], [white_balance] and [bundle] sections apply")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime (default: all cores)")
    p.set_defaults(func=_detect)

    p = subparsers.add_parser("config", help="check a robot.toml settings file",
                              description="Validate a robot.toml: unknown sections and keys, types, values.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate FILE and print the settings it gives")
    c.add_argument("file", type=Path, metavar="FILE")
    c.set_defaults(func=_config_check)


def build_sinks(args: argparse.Namespace, stack: Any) -> list[Any]:
    """Telemetry sinks from the command line, closed by ``stack`` (a ``contextlib.ExitStack``).

    Each sink has ``submit(record, thumbnail=None)`` and never blocks the loop; none
    when neither ``--serial`` nor ``--mqtt`` is given.
    """
    if not (args.serial or args.mqtt):
        return []
    from leafscout.link.credentials import read_key, read_password
    from leafscout.link.mqtt import url_has_password
    from leafscout.link.records import RecordError, check_id

    from .outbox import OutboxError
    from .serial_link import SerialLinkError
    from .telemetry import TelemetryError, open_sinks

    try:  # ids the station would refuse: fail now, not one dropped record at a time
        check_id("--robot-id", args.robot_id)
        check_id("--survey", args.survey)
    except RecordError as e:
        raise TelemetryError(str(e)) from None
    if args.mqtt and url_has_password(args.mqtt):
        raise TelemetryError("the --mqtt URL holds a password (readable in /proc by every user): use "
                             "--password-file or $LEAFSCOUT_MQTT_PASSWORD")
    try:
        return stack.enter_context(open_sinks(
            serial=args.serial, mqtt=args.mqtt, outbox_path=args.outbox, robot_id=args.robot_id,
            hmac_key=read_key(args.hmac_key_file), baudrate=args.serial_baud, max_records=args.outbox_limit,
            state_dir=args.state_dir, mqtt_password=read_password(args.password_file),
        ))
    except (ValueError, OutboxError, SerialLinkError) as e:  # a bad limit, broker URL (redacted), port setting
        raise TelemetryError(str(e)) from None


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import FieldConfig, LeafBank, SimulationError, simulate_run

    try:
        config = FieldConfig(rows=args.rows, row_length_m=args.row_length, lines=args.lines,
                             plant_spacing_m=args.spacing, speed_m_s=args.speed, fps=args.fps,
                             video_quality=args.video_quality, seed=args.seed, conditions=args.conditions)
        if args.leaves is not None:
            leaves = LeafBank.from_folder(args.leaves, split=args.split, part=args.part,
                                          per_class=args.per_class, seed=args.seed)
        elif args.split is not None:
            raise SimulationError("--split needs --leaves (the image folder the split refers to)")
        else:
            leaves = LeafBank.synthetic(seed=args.seed)
        out = simulate_run(args.out, config, leaves=leaves, progress=True)
    except (SimulationError, ValueError, OSError) as e:
        print(f"leafscout simulate: error: {e}", file=sys.stderr)
        return 2
    truth = json.loads((out / "truth.json").read_text())
    print(f"{truth['plants_total']} plants ({truth['diseased_total']} diseased) in {len(truth['rows'])} rows, "
          f"{truth['frames']} frames -> {out}")
    return 0


def _positions(args: argparse.Namespace, stack: Any) -> Any:
    from .gps import FieldGeometry, FramePosition, GpsPosition, GpsReader, NmeaLog

    if args.gps is None:
        return FramePosition() if args.camera.startswith("sim") else None
    field_path = args.field
    gps_path = Path(args.gps)
    recorded = gps_path.is_file()
    if field_path is None and recorded and (gps_path.parent / "field.json").is_file():
        field_path = gps_path.parent / "field.json"
    field = FieldGeometry.load(field_path) if field_path is not None else None
    gps = NmeaLog(gps_path) if recorded else stack.enter_context(GpsReader(args.gps, baudrate=args.baud))
    return GpsPosition(gps, field, max_age_s=args.gps_max_age)


def _providers(arg: str | None) -> list[str]:
    if arg:
        return [p.strip() for p in arg.split(",") if p.strip()]
    import onnxruntime as ort

    preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    return [p for p in preferred if p in ort.get_available_providers()] + ["CPUExecutionProvider"]


def _run(args: argparse.Namespace) -> int:
    import contextlib

    import cv2

    from leafscout.vision.bundle import BundleError
    from leafscout.vision.classifier import ClassifierError, LeafClassifier

    from .bundle_store import load_run_bundle
    from .camera import CameraError, open_capture
    from .gps import GpsError
    from .runtime import Runtime, RuntimeConfig, write_report
    from .simulate import SimulationError
    from .survey_store import SurveyStore, SurveyStoreError
    from .telemetry import TelemetryError

    try:
        settings = _resolve_run_flags(args)
    except ValueError as e:  # ConfigError
        print(f"leafscout run: error: {e}", file=sys.stderr)
        return 2
    if not args.camera:
        print("leafscout run: error: --camera is required (or [camera] source in --config)", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"leafscout run: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        cv2.setNumThreads(args.threads)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        with contextlib.ExitStack() as stack:
            bundle = load_run_bundle(args.bundle, int8=args.int8,  # installed: falls back to last-known-good
                                     providers=_providers(args.providers), threads=args.threads)
            classifier = LeafClassifier(bundle, abstain_below=args.abstain_below)
            positions = _positions(args, stack)
            capture = stack.enter_context(open_capture(args.camera, live=args.live))
            store = stack.enter_context(SurveyStore(args.db))
            if args.crop_fill is not None and not 0 <= args.crop_fill <= 255:
                raise ClassifierError(f"--crop-fill must be a grey level 0-255, got {args.crop_fill}")
            vision = {} if settings is None else {"localize": settings.localizer, "tracker": settings.tracker,
                                                  "white_balance": settings.white_balance}
            config = RuntimeConfig(robot_id=args.robot_id, survey_id=args.survey, crop_fill=args.crop_fill, **vision)
            sinks = build_sinks(args, stack)
            runtime = Runtime(capture, classifier, store, positions=positions, sinks=sinks, config=config)
            _add_monitors(runtime, args, bundle)
            if args.annotate is not None:
                from .annotate import VideoAnnotator

                runtime.annotator = stack.enter_context(
                    VideoAnnotator(args.annotate, classifier, fps=getattr(capture, "fps", None) or 20.0))
            report = runtime.run(stop=stop, max_frames=args.max_frames)
    except (BundleError, CameraError, GpsError, SurveyStoreError, SimulationError, ClassifierError,
            TelemetryError, OSError) as e:
        print(f"leafscout run: error: {e}", file=sys.stderr)
        return 2
    if args.report is not None:
        write_report(args.report, report)
    print(runtime.timer.format_table())
    print(f"plants {report['plants']}, diseased {report['diseased']}, uncertain {report['uncertain']}, "
          f"incidence {report['incidence']:.3f} (95% CI {report['ci95'][0]:.3f}-{report['ci95'][1]:.3f})")
    for row in report["rows"]:
        print(f"  row {row['row']}: {row['plants']} plants, {row['diseased']} diseased, {row['uncertain']} uncertain, "
              f"incidence {row['incidence']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]")
    if args.truth is not None:
        from .simulate import score_report

        score = score_report(report, json.loads(args.truth.read_text()))
        print(f"truth: {score['plants_truth']} plants planted, counted {score['count_error_pct']:+.2f} %; "
              f"worst row incidence {score['max_row_error_points']:.1f} points off")
        for r in score["rows"]:
            print(f"  row {r['row']}: incidence {r['incidence']:.3f} vs true {r['incidence_truth']:.3f} "
                  f"({r['error_points']:+.1f} points), {r['plants']}/{r['plants_truth']} plants")
    return _damage_status(report)


def _add_monitors(runtime: Any, args: argparse.Namespace, bundle: Any) -> None:
    """The status file (live runs, or --status-file) and sd_notify (under systemd) follow the loop."""
    from .bundle_store import describe
    from .sdnotify import SdNotifier
    from .status import StatusFile, default_status_path

    runtime.bundle_version = describe(bundle)
    if args.status_file is not None or runtime.capture.live:
        runtime.monitors.append(StatusFile(args.status_file or default_status_path(args.robot_id, args.state_dir)))
    notifier = SdNotifier()
    if notifier.socket_path:
        runtime.monitors.append(notifier)


def _damage_status(report: dict[str, Any]) -> int:
    """``EXIT_RECORDING_DAMAGED`` when frames of a replayed recording were lost, missing or undecodable:
    the counts above then cover only part of the field, and a script must not take them as the survey."""
    cam = report.get("camera", {})
    lost, truncated, corrupt = cam.get("lost", 0), cam.get("truncated", 0), cam.get("corrupt", 0)
    if report.get("mode") != "replay" or not (lost or truncated or corrupt):
        return 0
    print(f"leafscout run: warning: the recording is damaged: {lost} frames lost mid-file, {truncated} missing at "
          f"the end (truncated), {corrupt} undecodable; the survey is incomplete (exit {EXIT_RECORDING_DAMAGED})",
          file=sys.stderr)
    return EXIT_RECORDING_DAMAGED


def _resolve_run_flags(args: argparse.Namespace) -> Any:
    """Fill every `run` flag not given on the command line from --config, else its default.

    Returns the loaded ``RobotConfig`` (None without --config); raises ``ConfigError``.
    """
    settings = None
    from_file: dict[str, Any] = {}
    if args.config is not None:
        from .config import PATH_FLAGS, load_config

        settings = load_config(args.config)
        from_file = {k: Path(v) if k in PATH_FLAGS else v for k, v in settings.run_flags().items()}
    for dest, default in _RUN_DEFAULTS.items():
        if getattr(args, dest, _UNSET) is _UNSET:
            setattr(args, dest, from_file.get(dest, default))
    return settings


def _image_paths(items: list[Path]) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
    out: list[Path] = []
    for item in items:
        if item.is_dir():
            out += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in exts)
        elif item.is_file():
            out.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    return out


def _detect(args: argparse.Namespace) -> int:
    import cv2

    from leafscout.training.data import ImageReadError, read_image
    from leafscout.vision.bundle import BundleError, default_bundle_path, load_bundle
    from leafscout.vision.classifier import LeafClassifier
    from leafscout.vision.detect import Detector

    from .annotate import draw
    from .config import ConfigError, load_config
    from .runtime import RuntimeConfig

    try:
        settings = load_config(args.config) if args.config is not None else None
        paths = _image_paths(args.images)
        bundle_dir = args.bundle or (settings and settings.bundle.path) or default_bundle_path()
        bundle = load_bundle(bundle_dir, threads=args.threads)
        detector = Detector(LeafClassifier(bundle),
                            localize=settings.localizer if settings else None,
                            white_balance=settings.white_balance if settings else RuntimeConfig().white_balance)
        results = []
        for d in (args.masks, args.annotate):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        for path in paths:
            image = read_image(path)
            found = detector(image, mask=args.masks is not None or args.annotate is not None)
            results.append(found.to_json(str(path)))
            if args.masks is not None and not cv2.imwrite(str(args.masks / f"{path.stem}.png"), found.mask):
                raise OSError(f"could not write {args.masks / (path.stem + '.png')}")
            if args.annotate is not None:
                boxes = [(d.box, f"{d.cls.split('___')[-1]} {d.confidence:.2f}", d.health) for d in found.detections]
                out = args.annotate / f"{path.stem}.jpg"
                if not cv2.imwrite(str(out), draw(image, boxes, found.mask)):
                    raise OSError(f"could not write {out}")
    except (ConfigError, BundleError, ImageReadError, OSError) as e:
        print(f"leafscout detect: error: {e}", file=sys.stderr)
        return 2
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    n = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} images, {n} detections -> {args.json}")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import ConfigError, load_config

    try:
        settings = load_config(args.file)
    except ConfigError as e:
        print(f"leafscout config check: error: {e}", file=sys.stderr)
        return 2
    for f in dataclasses.fields(settings):
        section = getattr(settings, f.name)
        values = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(section).items() if v is not None)
        print(f"[{f.name}] {values}")
    print(f"{args.file}: ok")
    return 0
