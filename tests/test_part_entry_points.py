"""A lab's own package declares part kinds through the ``rig.parts`` entry
point, without editing the rig (rig/parts.py, docs/extending.md).

The test makes a tiny installed distribution in a folder (a module and its
``.dist-info`` with ``entry_points.txt``), puts the folder on PYTHONPATH and
asks a fresh interpreter what the rig knows: the package's device backend
and its instrument kind are there, and lab.yaml validation accepts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def test_a_lab_package_adds_kinds_through_the_entry_point(tmp_path):
    (tmp_path / "my_lab_parts.py").write_text(textwrap.dedent("""\
        from rig import parts

        parts.register(parts.DeviceBackend("lab_probe", "the lab's own probe", adapter="my_lab_parts:Probe"))
        parts.register(parts.InstrumentKind(
            "thermometer", "A bench thermometer.",
            drivers=(parts.Driver("lab_thermo", "my_lab_parts:Thermo"),),
            service="instruments.service:AnalyserService", handle="instruments.handles:InstrumentHandle"))


        class Probe:
            pass


        class Thermo:
            pass
        """))
    info = tmp_path / "my_lab_parts-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-lab-parts\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rig.parts]\nmy_lab = my_lab_parts\n")
    probe = textwrap.dedent("""\
        import json
        from rig import parts
        from rig.config import load_lab_text

        lab = load_lab_text('''
        benches:
          b1:
            instruments:
              t1: {kind: thermometer, driver: lab_thermo, address: TCPIP::10.0.0.9::5025::SOCKET}
            devices:
              m1: {kind: esme, id: "00:0d:6f:00:00:00:00:01", backend: lab_probe}
        ''', "lab.yaml")
        print(json.dumps({"backends": sorted(parts.device_backends()),
                          "kind": lab.bench("b1").instruments["t1"].kind,
                          "backend": lab.bench("b1").devices["m1"].backend}))
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert "lab_probe" in got["backends"] and {"zigpy", "optical"} <= set(got["backends"])
    assert (got["kind"], got["backend"]) == ("thermometer", "lab_probe")
