"""The record schema is the contract between robot, links and station: round trips and rejections."""
import math

import pytest

from leafscout.link.records import (
    UNCERTAIN,
    Heartbeat,
    PlantRecord,
    RecordError,
    RowSummary,
    is_diseased,
    record_from_dict,
)

PLANT = PlantRecord("r1", "s1", 7, 1700000000.5, "Tomato___Late_blight", 3, 0.93, 5, row=2, metre=4.25)


@pytest.mark.parametrize(
    "record",
    [
        PLANT,
        RowSummary("r1", "s1", 2, 10, 3, 1, 0.3, 0.1, 0.6, 1700000001.0),
        Heartbeat("r1", 1700000002.0, queue_depth=4, frames=100, fps=30.0, lat=52.1, lon=4.3),
    ],
)
def test_round_trip(record):
    assert record_from_dict(record.to_dict()) == record


def test_diseased_and_uncertain():
    assert PLANT.diseased and not PLANT.uncertain
    assert not is_diseased("Tomato___healthy")
    assert not is_diseased(UNCERTAIN)
    unsure = PlantRecord("r1", "s1", 8, 1.0, UNCERTAIN, -1, 0.4, 2)
    assert unsure.uncertain and not unsure.diseased


@pytest.mark.parametrize(
    "change, message",
    [
        ({"plant_id": "7"}, "plant_id"),
        ({"plant_id": True}, "plant_id"),
        ({"confidence": math.inf}, "finite"),
        ({"label": "x" * 200}, "longer"),
        ({"extra": 1}, "unknown keys"),
        ({"kind": "plant", "robot_id": None}, "robot_id"),
    ],
)
def test_bad_fields_are_rejected_with_a_reason(change, message):
    d = {**PLANT.to_dict(), **change}
    with pytest.raises(RecordError, match=message):
        record_from_dict(d)


def test_missing_required_key():
    d = PLANT.to_dict()
    del d["label"]
    with pytest.raises(RecordError, match="missing key 'label'"):
        record_from_dict(d)


@pytest.mark.parametrize("payload", [None, [], "plant", {"kind": "nope"}, {}])
def test_unknown_kind(payload):
    with pytest.raises(RecordError, match="unknown record kind"):
        record_from_dict(payload)


def test_record_ids_have_a_documented_shape():
    from leafscout.link.records import parse_record_id

    ob = "0123456789abcdef0123456789abcdef"
    assert parse_record_id(f"r1:{ob}:42", "r1") == ("r1", ob, 42)
    for bad in ["r1:42", f"r1:{ob}:0", f"r1:{ob.upper()}:1", f"r 1:{ob}:1", f"r1:{ob}:{2 ** 63}", 42, None,
                f"r2:{ob}:1"]:
        with pytest.raises(RecordError):
            parse_record_id(bad, "r1")
