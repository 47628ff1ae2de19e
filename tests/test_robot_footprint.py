"""The robot side runs on a board with numpy, OpenCV and onnxruntime: no torch at import."""
import subprocess
import sys

ROBOT_MODULES = ["vision", "leafscout.vision.bundle", "leafscout.vision.classifier", "leafscout.vision.localize", "leafscout.robot.runtime",
                 "leafscout.robot.camera", "leafscout.robot.tracker", "leafscout.robot.gps", "leafscout.robot.telemetry", "leafscout.robot.cli"]


def test_robot_modules_do_not_import_torch():
    code = (
        "import importlib, sys\n"
        f"for m in {ROBOT_MODULES!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training'))\n"
        "print(heavy[:5])\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"robot imports pulled in {done.stdout.strip()} {done.stderr[-2000:]}"


def test_cli_help_is_fast_and_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "leafscout", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "eval", "models", "study", "calibrate", "export", "verify", "bench", "simulate",
                    "run", "station", "report", "add-user"):
        assert f"    {command} " in done.stdout, command
