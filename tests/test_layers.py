"""Which part may import which: the wire format sits below robot and station, training below deploy.

Read from the source with ``ast`` (every import, lazy ones inside functions too), so a
new import that crosses a layer fails here rather than on a station without the robot's code.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("link", "vision", "training", "deploy", "robot", "station")
# part -> the parts it must never import
FORBIDDEN = {
    "link": {"vision", "training", "deploy", "robot", "station"},
    "vision": {"training", "deploy", "robot", "station"},
    "training": {"deploy", "robot", "station"},
    "deploy": {"robot", "station"},
    "robot": {"station"},
    "station": {"robot", "training", "deploy"},
}


def imported_parts(path: Path, part: str) -> dict[str, int]:
    """The leafscout parts a module imports, with the first line of each."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside its own part unless it climbs out of it
                depth = len(path.relative_to(REPO / part).parts) - 1
                names = [] if node.level <= depth + 1 else [f"leafscout.{node.module or ''}"]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if len(bits) >= 2 and bits[0] == "leafscout" and bits[1] in PARTS:
                found.setdefault(bits[1], node.lineno)
    return found


@pytest.mark.parametrize("part", PARTS)
def test_no_part_imports_a_layer_above_it(part: str) -> None:
    crossings = []
    for path in sorted((REPO / part).rglob("*.py")):
        for other, line in imported_parts(path, part).items():
            if other in FORBIDDEN[part]:
                crossings.append(f"{path.relative_to(REPO)}:{line} imports leafscout.{other}")
    assert not crossings, "\n".join(crossings)


def test_the_checker_sees_a_crossing(tmp_path: Path) -> None:
    """The rule above would pass vacuously if the parser missed imports; show it does not."""
    mod = REPO / "station" / "receiver.py"
    assert "link" in imported_parts(mod, "station")
    assert imported_parts(REPO / "deploy" / "export.py", "deploy").get("training")
