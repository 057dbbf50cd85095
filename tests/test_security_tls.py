"""TLS end to end on mosquitto, with client certificates and per-role
credentials: `rig up` serves the default lab over TLS, `rig run` on that
lab (already up) keeps TLS and its credentials through the URL it passes to
the suites and the bus capture, and `rig run` on a lab that is not up
brings it up over TLS itself.  No password reaches the run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rig.broker import Endpoint, free_port
from rig.bus import Bus, BusError
from rig.config import TlsConfig

from conftest import ROOT, require_mosquitto


def tls_lab(pki, path: Path, port: int) -> Path:
    data = yaml.safe_load((ROOT / "lab.yaml").read_text())
    data["broker"] = {
        "kind": "mosquitto", "host": "127.0.0.1", "port": port,
        "tls": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)},
        "server_tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                       "require_certificate": True},
    }
    data["lab"]["results"] = {"dir": str(path.parent / "runs"), "store": f"sqlite:///{path.parent / 'h.sqlite'}"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rig(*args: str) -> list[str]:
    return [sys.executable, "-m", "rig", *args]


def _secrets(state: Path) -> list[str]:
    return [p.read_text().strip() for p in state.rglob("*.pw")]


def _assert_no_secret_in(run_dir: Path, secrets: list[str]) -> None:
    assert secrets
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "bus.jsonl" and p.stat().st_size > 0 for p in files)
    for p in files:
        text = p.read_bytes().decode("utf-8", errors="replace")
        for s in secrets:
            assert s not in text, f"a password is in {p}"


def test_rig_up_and_rig_run_over_tls_with_client_certificates(pki, tmp_path):
    require_mosquitto()
    port = free_port()
    lab = tls_lab(pki, tmp_path / "lab.yaml", port)
    state = tmp_path / "state"
    env = dict(os.environ, RIG_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    env.pop("RIG_BROKER_URL", None)
    up_log = tmp_path / "up.log"
    with open(up_log, "w") as out:
        up = subprocess.Popen(_rig("up", "--lab", str(lab)), stdout=out, stderr=subprocess.STDOUT, env=env,
                              cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-Cstopsthelab" not in "".join(up_log.read_text().split()):   # rich wraps at 80 columns
            assert up.poll() is None, up_log.read_text()
            assert time.monotonic() < deadline, up_log.read_text()
            time.sleep(0.1)
        store = next(state.glob("broker-*"))
        secrets = _secrets(state)

        # the broker speaks TLS only, and wants a client certificate as well as a password
        orch_pw = str(store / "orchestrator.pw")
        plain = Endpoint("127.0.0.1", port, "mosquitto", username="orchestrator", password_file=orch_pw)
        with pytest.raises(BusError):
            Bus(plain, client_id="plain").connect(timeout=5)
        no_cert = Endpoint("127.0.0.1", port, "mosquitto", TlsConfig(ca_file=pki.ca), "orchestrator",
                           password_file=orch_pw)
        with pytest.raises(BusError):
            Bus(no_cert, client_id="no-cert").connect(timeout=5)

        run = subprocess.run(_rig("run", "--lab", str(lab), "--suite", "smoke"), env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        said = " ".join(run.stdout.split())
        assert "using the lab that is up" in said and "TLS with client certificate" in said, said
        run_dir = next((tmp_path / "runs").iterdir())
        _assert_no_secret_in(run_dir, secrets)
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(30)
    assert "lab stopped" in up_log.read_text()
    assert not list(state.glob("broker-*")), "rig up leaves no credentials behind"

    # not up: rig run brings the lab up over TLS itself (its agents and its suites' pytest included)
    run = subprocess.run(_rig("run", "--lab", str(lab), "--suite", "smoke"), env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "lab up: broker mqtts://orchestrator@127.0.0.1" in " ".join(run.stdout.split())


def test_rig_broker_config_gives_a_real_lab_broker_that_enforces_the_roles(pki, tmp_path):
    """The generated configuration, run by mosquitto: the bench's agent logs
    in with its credentials file over TLS; the observer may not command."""
    require_mosquitto()
    from rig.broker import mosquitto_path

    lab_text = (ROOT / "lab.yaml").read_text()
    lab = tmp_path / "lab.yaml"
    lab.write_text(lab_text)
    out = tmp_path / "broker"
    port = free_port()
    r = subprocess.run(_rig("broker", "config", "--lab", str(lab), "--out", str(out), "--port", str(port),
                            "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key),
                            "--cafile", str(pki.ca)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    creds = {p.stem: dict(line.split("=", 1) for line in p.read_text().splitlines() if "=" in line)
             for p in (out / "credentials").glob("*.env")}
    assert {"orchestrator", "observer", "agent-bench-1", "sim-bench-1"} <= set(creds) and "admin" not in creds
    assert oct((out / "credentials" / "observer.env").stat().st_mode & 0o777) == "0o600"
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "certfile" in conf
    # run it on loopback (the generated listener binds every interface: bind this test's to 127.0.0.1)
    conf = conf.replace(f"listener {port}", f"listener {port} 127.0.0.1") + "user root\n"
    (out / "test.conf").write_text(conf)
    proc = subprocess.Popen([mosquitto_path(), "-c", str(out / "test.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        from rig.broker import _wait_listening

        _wait_listening("127.0.0.1", port, 10, "mosquitto", proc)
        tls = TlsConfig(ca_file=pki.ca)
        env_pw = "RIG_T_BROKER_CONFIG_PW"
        os.environ[env_pw] = creds["agent-bench-1"]["RIG_MQTT_PASSWORD"]
        try:
            agent_ep = Endpoint("127.0.0.1", port, "external", tls, creds["agent-bench-1"]["RIG_MQTT_USER"],
                                password_env=env_pw)
            with Bus(Endpoint.from_url(agent_ep.url), client_id="agent-bench-1-x") as bus:
                assert bus.connected
            os.environ[env_pw] = creds["observer"]["RIG_MQTT_PASSWORD"]
            with pytest.raises(BusError, match="refused"):
                Bus(Endpoint("127.0.0.1", port, "external", tls, "agent-bench-1", password_env=env_pw),
                    client_id="wrong").connect(timeout=5)
        finally:
            del os.environ[env_pw]
    finally:
        proc.terminate()
        proc.wait(10)
