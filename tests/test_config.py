"""lab.yaml: the default lab is valid; every kind of broken file fails with
one ``file:line: key: message`` line and no traceback."""

import re
import subprocess
import sys

import pytest

from rig.config import ConfigError, load_lab, load_lab_text

from conftest import ROOT

DEFAULT = (ROOT / "lab.yaml").read_text()


def error_for(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_lab_text(text, "lab.yaml")
    return info.value


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_default_lab_is_valid_and_fully_simulated():
    lab = load_lab(ROOT / "lab.yaml")
    bench = lab.bench("bench-1")
    assert bench.controller.pin_factory == "mock"
    assert all(i.address == "sim" for i in bench.instruments.values())
    assert all(d.backend == "sim" for d in bench.devices.values())
    assert {d.kind for d in bench.devices.values()} == {"esme", "gsme", "comms_hub", "ppmid", "ihd"}
    assert bench.relays["mains"].safe_state == "off"
    assert lab.lab.clock.scale == 60


@pytest.mark.parametrize("name, old, new, needle, key, words", [
    ("syntax error", "kind: auto", "kind: [auto", "kind: [auto", "broker.kind", "YAML syntax error"),
    ("duplicate GPIO pin", "pin: 4 ", "pin: 17 ", "pin: 17 ", "benches.bench-1.controller.estop.pin",
     "already used by relays.mains.pin"),
    ("unknown device in RF path", "between: [comms_hub, gsme]", "between: [comms_hub, gasmeter]",
     "gasmeter", "benches.bench-1.rf_paths.gas-868.between[1]", "unknown device 'gasmeter'"),
    ("unknown key", "min_interval: 1.0", "min_intervall: 1.0", "min_intervall",
     "benches.bench-1.relays.mains.min_intervall", "unknown key"),
    ("wrong type", "hold_time: 2.0", "hold_time: soon", "hold_time: soon",
     "benches.bench-1.devices.esme.settings.hold_time", "valid number"),
    ("inline secret", "  port: 18830", "  port: 18830\n  password: hunter2", "password: hunter2",
     "broker.password", "password_env"),
    ("unknown driver", "driver: yokogawa_wt310", "driver: wt999", "driver: wt999",
     "benches.bench-1.instruments.analyser.driver", "unknown driver 'wt999'"),
    ("unknown fault", "        backend: sim\n        han: {band: dual}\n        settings:\n          hold_time",
     "        backend: sim\n        faults: [melts]\n        han: {band: dual}\n        settings:\n          hold_time",
     "faults: [melts]", "benches.bench-1.devices.esme.faults[0]", "unknown fault profile 'melts'"),
    ("attenuator is not an attenuator", "attenuator: attenuator_gas", "attenuator: analyser",
     "attenuator: analyser", "benches.bench-1.rf_paths.gas-868.attenuator", "not an attenuator"),
])
def test_broken_lab_names_file_line_and_key(name, old, new, needle, key, words):
    assert old in DEFAULT, f"test setup: {old!r} not in lab.yaml"
    text = DEFAULT.replace(old, new, 1)
    exc = error_for(text)
    assert exc.file == "lab.yaml"
    assert exc.key == key
    assert exc.line == line_of(text, needle)
    assert words in exc.message
    assert str(exc).startswith(f"lab.yaml:{exc.line}: {key}: ")
    assert "\n" not in str(exc)


def test_relay_without_safe_state_is_refused():
    text = DEFAULT.replace('        safe_state: "off"\n', "", 1)
    exc = error_for(text)
    assert exc.key == "benches.bench-1.relays.mains.safe_state"
    assert "required" in exc.message


def test_duplicate_yaml_key_is_refused_not_collapsed():
    text = DEFAULT.replace("      gsme:\n        kind: gsme", "      esme:\n        kind: gsme", 1)
    exc = error_for(text)
    assert exc.key == "benches.bench-1.devices.esme"
    assert "duplicate key (first given on line" in exc.message


def test_bare_yaml_on_off_safe_state_is_understood():
    lab = load_lab_text(DEFAULT.replace('safe_state: "off"', "safe_state: off", 1))
    assert lab.bench("bench-1").relays["mains"].safe_state == "off"


def test_pin_spellings_collide():
    text = DEFAULT.replace("pin: 4 ", "pin: GPIO17 ", 1)
    assert "already used" in error_for(text).message


def test_credentials_come_from_named_environment_variables(monkeypatch):
    text = DEFAULT.replace("  port: 18830", "  port: 18830\n  username_env: LAB_MQTT_USER\n  password_env: LAB_MQTT_PW")
    lab = load_lab_text(text)
    monkeypatch.setenv("LAB_MQTT_USER", "bench")
    monkeypatch.setenv("LAB_MQTT_PW", "s3cret")
    assert lab.broker.credentials() == ("bench", "s3cret")


@pytest.mark.parametrize("old, new, key", [
    ("kind: auto", "kind: [auto", "broker.kind"),
    ("pin: 4 ", "pin: 17 ", "benches.bench-1.controller.estop.pin"),
    ("between: [comms_hub, gsme]", "between: [comms_hub, gasmeter]", "benches.bench-1.rf_paths.gas-868.between[1]"),
])
def test_cli_prints_one_line_and_exits_nonzero(tmp_path, old, new, key):
    bad = tmp_path / "broken.yaml"
    bad.write_text(DEFAULT.replace(old, new, 1))
    proc = subprocess.run([sys.executable, "-m", "rig", "check", "--lab", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.match(rf"^error: {re.escape(str(bad))}:\d+: {re.escape(key)}: ", lines[0]), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_file_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rig", "check", "--lab", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_lab_yaml_reference_is_up_to_date():
    from rig.config_reference import render

    assert (ROOT / "docs" / "lab-yaml.md").read_text() == render(), \
        "docs/lab-yaml.md is stale: python -m rig.config_reference > docs/lab-yaml.md"
