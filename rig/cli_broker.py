"""``rig broker config``: the security configuration of a real lab's broker."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_common import Exit, LabOpt, console, load

broker_app = typer.Typer(help="The lab's MQTT broker: its security configuration.", no_args_is_help=True)


@broker_app.command("config")
def broker_config(
    out: Path = typer.Option(..., "--out", "-o", help="an empty directory for the configuration"),
    lab: Path = LabOpt,
    port: int = typer.Option(8883, help="the broker's TLS port"),
    certfile: Path = typer.Option(..., help="the broker's certificate (PEM)"),
    keyfile: Path = typer.Option(..., help="its private key (PEM)"),
    cafile: Optional[Path] = typer.Option(None, help="the lab CA (default: lab.yaml broker.tls.ca_file); "
                                          "needed to check client certificates"),
    require_certificate: bool = typer.Option(False, help="clients must also present a certificate signed by the CA"),
) -> None:
    """Write the mosquitto configuration of a real lab's broker: a TLS listener,
    no anonymous clients, a password file and an ACL generated from lab.yaml
    (one user per role: orchestrator, observer, agent-<bench>, sim-<bench>,
    device-<bench>-<device>), and one 0600 credentials file per client."""
    from .broker import write_broker_config
    from .security import SecurityError

    cfg = load(lab)
    ca = cafile or (cfg.broker.tls.ca_file if cfg.broker.tls else None)
    if require_certificate and ca is None:
        raise Exit("--require-certificate needs the lab CA (--cafile or broker.tls.ca_file)", 2)
    for f in (certfile, keyfile, *([ca] if ca else [])):
        if not Path(f).is_file():
            raise Exit(f"{f}: no such file", 2)
    try:
        files = write_broker_config(cfg, out, port, Path(certfile).resolve(), Path(keyfile).resolve(),
                                    Path(ca).resolve() if ca else None, require_certificate)
    except SecurityError as exc:
        raise Exit(str(exc), 2) from None
    console.print(f"[green]broker configuration for lab '{cfg.lab.name}' in {out}[/green]", highlight=False)
    console.print(f"  {files['conf']}: include it in the broker's mosquitto.conf (or run mosquitto -c on it)",
                  highlight=False)
    console.print(f"  {files['passwd']}, {files['acl']}: the password file and the ACL it names", highlight=False)
    console.print(f"  {files['credentials']}/<user>.env: give each host its own file only "
                  "(RIG_MQTT_USER/RIG_MQTT_PASSWORD, the variables lab.yaml names)", highlight=False)
