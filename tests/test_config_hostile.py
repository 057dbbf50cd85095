"""Hostile lab files (issue 10, item 7): a binary, text that is not UTF-8,
an alias bomb, very deep nesting, a huge file, a directory, a device, a
pipe.  Each gives one clear line naming the file and exit code 2, within
seconds: never a traceback, a hang or a machine out of memory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rig.yamlpos import MAX_BYTES

from conftest import ROOT


def bomb() -> bytes:
    """The billion laughs: ten aliases of ten aliases ... nine levels deep."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 10)}]")
    return ("\n".join(lines) + "\n").encode()


CASES = {
    "binary": (bytes(range(256)) * 8, "not UTF-8 text"),
    "latin-1": ("lab: {name: caf\xe9}\n".encode("latin-1"), "not UTF-8 text (byte 0xe9"),
    "control character": (b"lab:\n  name: a\x00b\n", "not a YAML text file: character #x0000"),
    "alias bomb": (bomb(), "aliases are expanded"),
    "deep flow nesting": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    "deep block nesting": ("".join("  " * i + f"k{i}:\n" for i in range(300)).encode(), "nested deeper than"),
    "alias that contains itself": (b"benches: &a {b: *a}\n", "alias that contains itself"),
    "huge": (b"# " + b"x" * MAX_BYTES + b"\n", "too big for a lab file"),
}


def rig_check(path) -> tuple[int, list[str]]:
    try:
        done = subprocess.run([sys.executable, "-m", "rig", "check", "--lab", str(path)], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rig check on {path} did not answer within 60 s")
    return done.returncode, (done.stdout + done.stderr).strip().splitlines()


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_file_is_one_clear_line_naming_it(tmp_path, case):
    content, words = CASES[case]
    path = tmp_path / "lab.yaml"
    path.write_bytes(content)
    code, lines = rig_check(path)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}"), lines
    assert words in lines[0], lines
    assert "Traceback" not in lines[0] and "Error:" not in lines[0]


def test_a_directory_a_device_and_a_pipe_are_not_lab_files(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)                   # opening it would block until someone writes
    (tmp_path / "dir.yaml").mkdir()
    targets = {tmp_path / "dir.yaml": "is a directory", fifo: "not a regular file"}
    if os.path.exists("/dev/zero"):
        targets["/dev/zero"] = "not a regular file"   # reading it never ends
    for path, words in targets.items():
        code, lines = rig_check(path)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {path}") and words in lines[0], lines
