"""Camera sources and the capture watchdog: real files, real folders, the simulator, a fake live camera."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from leafscout.robot.camera import (
    CameraError,
    CameraNotFoundError,
    Capture,
    Frame,
    FrameSource,
    SourceGoneError,
    make_source,
    open_capture,
    source_kind,
)
from leafscout.robot.simulate import FieldConfig, simulate_run

SMALL_FIELD = FieldConfig(rows=1, row_length_m=1.5, fps=20.0, seed=3)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_run(tmp_path_factory.mktemp("rec"), SMALL_FIELD)


@pytest.fixture(scope="module")
def frame_files(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real frames from the simulated recording, as PNG files (what the fake camera serves)."""
    out = tmp_path_factory.mktemp("frames")
    cap = cv2.VideoCapture(str(recording / "field.avi"))
    paths = []
    for i in range(8):
        ok, img = cap.read()
        assert ok
        paths.append(out / f"frame{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    cap.release()
    return paths


def read_all(cap: Capture) -> list[Frame]:
    frames = []
    while (f := cap.read(timeout=10)) is not None:
        frames.append(f)
    return frames


# -- sources chosen by a string ---------------------------------------------------------
def test_video_file_replays_every_frame_on_stream_time(recording: Path) -> None:
    import json

    truth = json.loads((recording / "truth.json").read_text())
    with open_capture(str(recording / "field.avi"), queue_size=2) as cap:  # tiny queue: must block, not drop
        assert not cap.live
        frames = read_all(cap)
    assert len(frames) == truth["frames"] and cap.stats.dropped == 0
    assert [f.index for f in frames] == list(range(len(frames)))
    assert frames[5].t == pytest.approx(5 / 20.0)
    assert frames[0].image.shape == (480, 640, 3)


def test_folder_skips_and_counts_corrupt_and_empty_images(frame_files: list[Path], tmp_path: Path) -> None:
    for i, p in enumerate(frame_files[:4]):
        (tmp_path / f"img{i * 2}.png").write_bytes(p.read_bytes())
    (tmp_path / "img1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    cv2.imwrite(str(tmp_path / "img3.png"), np.zeros((480, 640, 3), np.uint8))  # a black, empty frame
    (tmp_path / "notes.txt").write_text("not an image")
    with open_capture(str(tmp_path), folder_fps=5) as cap:
        frames = read_all(cap)
    assert [f.meta["file"] for f in frames] == ["img0.png", "img2.png", "img4.png", "img6.png"]
    assert cap.stats.corrupt == 2 and cap.stats.frames_read == 6
    assert frames[1].t == pytest.approx(2 / 5)  # img2 is the third file: skipped frames keep their time slot


def test_simulator_source_carries_row_and_metre() -> None:
    src = make_source("sim:rows=1,length=1.5,seed=3")
    with Capture(lambda: src) as cap:
        frames = read_all(cap)
    assert len(frames) == src.simulator.n_frames
    metres = [f.meta["metre"] for f in frames]
    assert all(f.meta["row"] == 0 for f in frames) and metres == sorted(metres) and metres[-1] > metres[0]


@pytest.mark.parametrize("spec", ["/dev/video97", "97"])
def test_missing_device_is_a_clear_error(spec: str) -> None:
    with pytest.raises(CameraNotFoundError, match="/dev/video97 does not exist"):
        open_capture(spec)


def test_unknown_source_names_the_accepted_forms(tmp_path: Path) -> None:
    with pytest.raises(CameraNotFoundError, match="does not exist; expected a video file, a folder"):
        open_capture(str(tmp_path / "nope.avi"))
    assert source_kind("rtsp://cam.local/stream") == "stream"
    assert source_kind("v4l2src ! videoconvert ! appsink") == "gstreamer"
    assert source_kind(0) == "device"


def test_unreadable_video_file_fails_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"RIFF0000AVI garbage" * 10)
    with pytest.raises(CameraError, match="could not open"):
        open_capture(str(bad)).start()


# -- a fake live camera: real frames, told to stall, freeze or vanish ------------------------
class FakeCamera:
    """Controls live fake camera instances; each reopen makes a new instance."""

    def __init__(self, frame_files: list[Path], fps: float = 100.0) -> None:
        self.images = [cv2.imread(str(p)) for p in frame_files]
        self.period = 1.0 / fps
        self.opened = 0
        self.stall_upto = self.freeze_upto = self.corrupt_upto = 0  # instances <= these misbehave
        self.vanished = False
        self.release = threading.Event()  # lets stalled reads return at the end of the test
        self.open_attempts = threading.Semaphore(0)
        self.produced = 0
        self.produced_cond = threading.Condition()

    def factory(self) -> "FakeSource":
        return FakeSource(self)

    def stall(self) -> None:
        self.stall_upto = self.opened

    def freeze(self) -> None:
        self.freeze_upto = self.opened

    def corrupt(self) -> None:
        self.corrupt_upto = self.opened


class FakeSource(FrameSource):
    live = True

    def __init__(self, ctl: FakeCamera) -> None:
        super().__init__("fake")
        self.ctl = ctl
        self.fps = 1.0 / ctl.period
        self.instance = 0

    def open(self) -> None:
        self.ctl.open_attempts.release()
        if self.ctl.vanished:
            raise SourceGoneError("fake camera is unplugged")
        self.ctl.opened += 1
        self.instance = self.ctl.opened

    def read(self) -> Frame | None:
        ctl = self.ctl
        ctl.release.wait(ctl.period)  # the camera's frame period
        if ctl.vanished:
            raise SourceGoneError("fake camera is unplugged")
        if self.instance <= ctl.stall_upto:
            ctl.release.wait(30)
        i = self._next_index()
        image = ctl.images[0 if self.instance <= ctl.freeze_upto else i % len(ctl.images)]
        if self.instance <= ctl.corrupt_upto:
            image = None if i % 2 else np.zeros_like(image)
        with ctl.produced_cond:
            ctl.produced += 1
            ctl.produced_cond.notify_all()
        return Frame(image, i, time.time(), {"instance": self.instance})


@pytest.fixture
def fake(frame_files: list[Path]):
    ctl = FakeCamera(frame_files)
    yield ctl
    ctl.release.set()


def wait_for_new_instance(cap: Capture, instance: int) -> None:
    """Read until a frame from a camera instance newer than ``instance`` arrives (the reopened camera).

    No wall-clock bound is asserted (a loaded machine must not fail the test): the watchdog's
    timing is its configuration, what is tested is that it detects, reopens and counts."""
    while cap.read(timeout=10).meta["instance"] <= instance:
        pass


def test_stalled_camera_is_detected_and_reopened(fake: FakeCamera) -> None:
    with Capture(fake.factory) as cap:
        assert cap.live and cap.read(timeout=5).meta["instance"] == 1
        fake.stall()
        wait_for_new_instance(cap, 1)
    assert cap.stats.stalls == 1 and cap.stats.reopens == 1


def test_frozen_camera_is_detected_and_reopened(fake: FakeCamera) -> None:
    with Capture(fake.factory) as cap:
        cap.read(timeout=5)
        fake.freeze()
        wait_for_new_instance(cap, 1)
    assert cap.stats.freezes == 1 and cap.stats.frozen > 10


def test_camera_that_only_sends_broken_frames_is_reopened(fake: FakeCamera) -> None:
    with Capture(fake.factory) as cap:
        cap.read(timeout=5)
        fake.corrupt()
        wait_for_new_instance(cap, 1)
    assert cap.stats.corrupt > 10 and cap.stats.freezes == 1


def test_vanished_camera_is_retried_with_backoff_until_it_returns(fake: FakeCamera) -> None:
    with Capture(fake.factory, backoff_s=(0.02, 0.2)) as cap:
        cap.read(timeout=5)
        fake.vanished = True
        for _ in range(4):  # initial open + failed reopens
            assert fake.open_attempts.acquire(timeout=5)
        fake.vanished = False
        wait_for_new_instance(cap, 1)
    assert cap.stats.disconnects == 1 and cap.stats.reopens == 1


def test_live_capture_hands_over_the_newest_frame_and_counts_drops(fake: FakeCamera) -> None:
    with Capture(fake.factory) as cap:
        first = cap.read(timeout=5)
        with fake.produced_cond:  # let the camera run ahead of a slow loop
            target = first.index + 8
            assert fake.produced_cond.wait_for(lambda: fake.produced >= target, timeout=5)
        newest = cap.read(timeout=5)
    assert newest.index >= first.index + 5
    assert cap.stats.dropped >= 3


def test_live_camera_not_up_at_start_is_waited_for(fake: FakeCamera) -> None:
    fake.vanished = True  # a stream camera still booting: opening it fails
    with Capture(fake.factory, backoff_s=(0.02, 0.2)) as cap:  # no error: waited for with backoff
        for _ in range(3):  # the first open and two retries
            assert fake.open_attempts.acquire(timeout=5)
        with pytest.raises(TimeoutError):
            cap.read(timeout=0.05)
        fake.vanished = False
        assert cap.read(timeout=10).meta["instance"] == 1
    assert cap.stats.reopens == 1 and cap.fps == 1.0 / fake.period


def test_unreadable_recording_still_fails_at_start_with_replay(tmp_path: Path) -> None:
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"RIFF0000AVI garbage" * 10)
    with pytest.raises(CameraError, match="could not open"):
        open_capture(str(bad), live=True).start()  # a file is not a camera that may come up later


def test_close_joins_every_capture_thread(fake: FakeCamera) -> None:
    with Capture(fake.factory) as cap:
        cap.read(timeout=5)
        threads = list(cap._threads)
    assert threads and not any(t.is_alive() for t in threads)
