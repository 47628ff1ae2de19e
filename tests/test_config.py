"""robot.toml: sections map to settings and run flags, flags win, unknown keys are errors that name the key."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from leafscout.cli import main
from leafscout.robot.config import EXAMPLE, ConfigError, RobotConfig, load_config, parse_config
from leafscout.vision.localize import LocalizeConfig


def test_the_shipped_example_is_valid_and_mentions_every_localizer_setting() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.camera.source == "/dev/video0" and cfg.survey.id == "north-field"
    text = EXAMPLE.read_text()
    for f in dataclasses.fields(LocalizeConfig):
        assert f"\n{f.name} = " in text, f.name
    assert cfg.localizer == LocalizeConfig()  # the example shows the defaults
    from leafscout.robot.runtime import RuntimeConfig

    assert cfg.white_balance == RuntimeConfig().white_balance


def test_values_reach_their_dataclasses_with_their_types() -> None:
    cfg = parse_config({"localizer": {"min_index": 0.12, "split_saddle": 0.8, "peak_px": 4, "work_width": 200},
                        "white_balance": {"mode": "fixed", "gains": [1, 1.1, 0.9]},
                        "tracker": {"min_frames": 4}, "gps": {"port": "gps.nmea", "baud": 4800}})
    assert cfg.localizer.min_index == 0.12 and cfg.localizer.split_saddle == 0.8 and cfg.localizer.peak_px == 4
    assert cfg.white_balance.gains == (1.0, 1.1, 0.9) and cfg.tracker.min_frames == 4
    assert cfg.run_flags() == {"gps": "gps.nmea", "baud": 4800}


@pytest.mark.parametrize("doc,message", [
    ({"localizer": {"min_indx": 0.1}}, "unknown key localizer.'min_indx'"),
    ({"camera": {"source": "x", "fps": 30}}, "unknown key camera.'fps'"),
    ({"lokalizer": {}}, r"unknown section \[lokalizer\]"),
    ({"localizer": {"work_width": "wide"}}, "localizer.work_width = 'wide': expected int"),
    ({"localizer": {"open_px": True}}, "localizer.open_px = True: expected int"),
    ({"white_balance": {"mode": "sunny"}}, r"\[white_balance\]: white balance mode 'sunny' is not one of"),
    ({"localizer": {"min_area": 0.6, "max_area": 0.5}}, r"\[localizer\]: need 0 <= min_area < max_area"),
])
def test_bad_settings_are_errors_that_name_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(doc)


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "robot.toml"
    good.write_text('[localizer]\nmin_index = 0.1\n[survey]\nid = "east"\n')
    assert main(["config", "check", str(good)]) == 0
    assert "min_index=0.1" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[tracker]\nmin_frame = 3\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "unknown key tracker.'min_frame'" in err
    (tmp_path / "broken.toml").write_text("[tracker\n")
    assert main(["config", "check", str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_run_takes_its_settings_from_the_file_and_flags_win(tiny_bundle: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "robot.toml"
    cfg.write_text(f'[camera]\nsource = "sim:rows=1,length=1.5,seed=3"\n[bundle]\npath = "{tiny_bundle}"\n'
                   f'[survey]\nid = "from-file"\nreport = "{tmp_path / "file.json"}"\n[tracker]\nmin_frames = 3\n')
    assert main(["run", "--config", str(cfg), "--threads", "1"]) == 0
    report = json.loads((tmp_path / "file.json").read_text())
    assert report["survey"] == "from-file" and report["source"].startswith("sim:rows=1")
    assert main(["run", "--config", str(cfg), "--threads", "1", "--survey", "from-flag",
                 "--report", str(tmp_path / "flag.json")]) == 0
    assert json.loads((tmp_path / "flag.json").read_text())["survey"] == "from-flag"
    assert not (tmp_path / "missing.json").exists()


def test_run_rejects_a_bad_file_and_needs_a_camera(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "robot.toml"
    bad.write_text("[localizer]\nthreshold = 3\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "unknown key localizer.'threshold'" in capsys.readouterr().err
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert main(["run", "--config", str(empty)]) == 2
    assert "--camera is required" in capsys.readouterr().err
    assert RobotConfig().run_flags() == {}
