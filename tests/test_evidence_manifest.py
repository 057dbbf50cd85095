"""MANIFEST.sha256: a sealed run verifies; one changed byte in any file fails."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from rig.cli import main
from rig.evidence.manifest import ManifestError, read_manifest, run_hash, verify, write_manifest


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "20261123T000000Z-abcdef"
    (d / "logs").mkdir(parents=True)
    (d / "run.json").write_text('{"id": "x", "complete": true}')
    (d / "junit.xml").write_text("<testsuites/>")
    (d / "bus.jsonl").write_text('{"topic": "rig/v1/x", "ts": 1, "wall": 1, "payload": {}}\n' * 50)
    (d / "logs" / "bench-1-agent.log").write_text("agent up\n")
    (d / "logs" / "odd name\\with\nnewline.log").write_text("still hashed\n")
    (d / "empty.txt").write_bytes(b"")
    write_manifest(d)
    return d


def test_sealed_run_verifies(run_dir):
    v = verify(run_dir)
    assert v.intact and v.checked == 6
    assert set(read_manifest(run_dir / "MANIFEST.sha256")) == {
        "run.json", "junit.xml", "bus.jsonl", "logs/bench-1-agent.log", "logs/odd name\\with\nnewline.log", "empty.txt"}


def test_one_changed_byte_in_any_file_fails_naming_it(run_dir):
    for name in read_manifest(run_dir / "MANIFEST.sha256"):
        path = run_dir / name
        original = path.read_bytes()
        changed = bytearray(original or b"\0")
        changed[len(changed) // 2] ^= 0x01
        path.write_bytes(bytes(changed))
        v = verify(run_dir)
        assert not v.intact and v.changed == [name], name
        path.write_bytes(original)
        assert verify(run_dir).intact


def test_missing_and_extra_files_are_named(run_dir):
    (run_dir / "junit.xml").unlink()
    (run_dir / "notes.txt").write_text("added later")
    v = verify(run_dir)
    assert v.missing == ["junit.xml"] and v.extra == ["notes.txt"]
    assert v.lines() == ["missing: junit.xml", "extra:   notes.txt"]


def test_manifest_edited_to_match_changes_the_run_hash(run_dir):
    before = run_hash(run_dir)
    (run_dir / "run.json").write_text('{"id": "x", "complete": true, "status": "passed"}')
    write_manifest(run_dir)  # a forger re-seals: the folder verifies, but its hash is no longer the quoted one
    assert verify(run_dir).intact and run_hash(run_dir) != before


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="GNU coreutils sha256sum not installed")
def test_manifest_checks_with_gnu_sha256sum(run_dir):
    out = subprocess.run(["sha256sum", "--strict", "-c", "MANIFEST.sha256"], cwd=run_dir, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir / "bus.jsonl").write_text("tampered")
    assert subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=run_dir, capture_output=True).returncode != 0


def test_rig_verify_exit_codes(run_dir, capsys):
    main(["verify", str(run_dir)])  # returns: exit 0
    assert "intact" in capsys.readouterr().out
    (run_dir / "run.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(run_dir)])
    assert exc.value.code == 1
    assert "changed: run.json" in capsys.readouterr().out
    (run_dir / "MANIFEST.sha256").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(run_dir)])
    assert exc.value.code == 2
    assert "MANIFEST.sha256: missing: the run was never sealed" in capsys.readouterr().err


def test_unreadable_manifest_names_file_and_line(run_dir):
    (run_dir / "MANIFEST.sha256").write_text("not a digest  run.json\n")
    with pytest.raises(ManifestError, match=r"MANIFEST\.sha256:1: not a sha256sum line"):
        verify(run_dir)
