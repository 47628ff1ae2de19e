"""The robot's settings file: ``leafscout run --config robot.toml`` (read with tomllib).

One dataclass per ``[section]``. ``[localizer]``, ``[white_balance]`` and ``[tracker]``
are the vision and tracking settings themselves (``LocalizeConfig``, ``WhiteBalance``,
``TrackerConfig``); ``[camera]``, ``[gps]``, ``[serial]``, ``[mqtt]``, ``[bundle]`` and
``[survey]`` hold what ``leafscout run`` otherwise takes as flags (``RUN_FLAGS`` maps
each key to its flag; a flag given on the command line wins). An unknown section or
key, or a value of the wrong type, is an error that names it. ``robot.example.toml``
beside this module is a commented example; ``leafscout config check FILE`` validates one.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leafscout.vision.localize import LocalizeConfig
from leafscout.vision.white_balance import WhiteBalance

from .tracker import TrackerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["RobotConfig", "ConfigError", "load_config", "parse_config", "RUN_FLAGS", "EXAMPLE"]

EXAMPLE = Path(__file__).with_name("robot.example.toml")


class ConfigError(ValueError):
    """A settings file that cannot be used; the message names the file, section and key."""


@dataclass(frozen=True)
class CameraSection:
    source: str | None = None  # --camera
    live: bool | None = None  # --live / --replay
    threads: int | None = None  # --threads


@dataclass(frozen=True)
class GpsSection:
    port: str | None = None  # --gps: a pyserial URL or a recorded NMEA file
    baud: int | None = None  # --baud
    field: str | None = None  # --field: field.json row geometry
    max_age_s: float | None = None  # --gps-max-age: older fixes are stale


@dataclass(frozen=True)
class SerialSection:
    port: str | None = None  # --serial
    baud: int | None = None  # --serial-baud


@dataclass(frozen=True)
class MqttSection:
    url: str | None = None  # --mqtt (no password in it: password_file or $LEAFSCOUT_MQTT_PASSWORD)
    outbox: str | None = None  # --outbox
    hmac_key_file: str | None = None  # --hmac-key-file
    password_file: str | None = None  # --password-file
    state_dir: str | None = None  # --state-dir
    outbox_limit: int | None = None  # --outbox-limit


@dataclass(frozen=True)
class BundleSection:
    path: str | None = None  # --bundle
    int8: bool | None = None  # --int8 / --no-int8
    providers: str | None = None  # --providers
    abstain_below: float | None = None  # --abstain-below
    crop_fill: int | None = None  # --crop-fill


@dataclass(frozen=True)
class SurveySection:
    id: str | None = None  # --survey
    robot_id: str | None = None  # --robot-id
    db: str | None = None  # --db
    report: str | None = None  # --report


@dataclass(frozen=True)
class RobotConfig:
    camera: CameraSection = field(default_factory=CameraSection)
    gps: GpsSection = field(default_factory=GpsSection)
    serial: SerialSection = field(default_factory=SerialSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    bundle: BundleSection = field(default_factory=BundleSection)
    survey: SurveySection = field(default_factory=SurveySection)
    localizer: LocalizeConfig = field(default_factory=LocalizeConfig)
    white_balance: WhiteBalance = field(default_factory=lambda: _runtime_default_white_balance())
    tracker: TrackerConfig = field(default_factory=TrackerConfig)

    def run_flags(self) -> dict[str, Any]:
        """``leafscout run`` argument names -> values this file sets (keys it leaves out are absent)."""
        out = {}
        for (section, key), dest in RUN_FLAGS.items():
            value = getattr(getattr(self, section), key)
            if value is not None:
                out[dest] = value
        return out


def _runtime_default_white_balance() -> WhiteBalance:
    from .runtime import RuntimeConfig

    return RuntimeConfig().white_balance


RUN_FLAGS: dict[tuple[str, str], str] = {
    ("camera", "source"): "camera", ("camera", "live"): "live", ("camera", "threads"): "threads",
    ("gps", "port"): "gps", ("gps", "baud"): "baud", ("gps", "field"): "field", ("gps", "max_age_s"): "gps_max_age",
    ("serial", "port"): "serial", ("serial", "baud"): "serial_baud",
    ("mqtt", "url"): "mqtt", ("mqtt", "outbox"): "outbox", ("mqtt", "hmac_key_file"): "hmac_key_file",
    ("mqtt", "password_file"): "password_file", ("mqtt", "state_dir"): "state_dir",
    ("mqtt", "outbox_limit"): "outbox_limit",
    ("bundle", "path"): "bundle", ("bundle", "int8"): "int8", ("bundle", "providers"): "providers",
    ("bundle", "abstain_below"): "abstain_below", ("bundle", "crop_fill"): "crop_fill",
    ("survey", "id"): "survey", ("survey", "robot_id"): "robot_id", ("survey", "db"): "db",
    ("survey", "report"): "report",
}
PATH_FLAGS = {"field", "outbox", "hmac_key_file", "password_file", "state_dir", "bundle", "db", "report"}  # argparse gives these as Path


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as ``annotation`` wants it (lists become tuples, ints floats), or ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        for a in options:
            try:
                return _check_type(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} = {value!r}: expected {' or '.join(_name(a) for a in options)}")
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} = {value!r}: expected a list")
        item = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} = {value!r}: expected a list of {len(args)}")
            return tuple(_check_type(v, a, where) for v, a in zip(value, args))
        return tuple(_check_type(v, item, where) for v in value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):  # 1 is 1.0
        return float(value)
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    raise ConfigError(f"{where} = {value!r}: expected {_name(annotation)}")


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _section(cls: type, table: Any, name: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key!r} in [{name}]; known: {', '.join(known)}")
        kwargs[key] = _check_type(value, hints[key], f"{name}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[{name}]: {e}") from e


def parse_config(doc: dict[str, Any]) -> RobotConfig:
    """A ``RobotConfig`` from a parsed TOML document."""
    sections = {f.name: f for f in dataclasses.fields(RobotConfig)}
    hints = typing.get_type_hints(RobotConfig)
    kwargs = {}
    for name, table in doc.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]; known: {', '.join(sections)}")
        kwargs[name] = _section(hints[name], table, name)
    return RobotConfig(**kwargs)


def load_config(path: str | os.PathLike) -> RobotConfig:
    """Read and validate a robot.toml; errors name the file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    try:
        return parse_config(doc)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
