"""Programmable RF attenuators in the HAN paths (Mini-Circuits RCDAT, Keysight 11713).

An attenuator stands for the walls and distance between two devices: its
setting enters the link budget of the RF path it sits in (lab.yaml
``rf_paths``).  Both drivers share the lab verbs (``set(db)``, ``db``) and
the checks made before anything is sent, from their declared ``attenuation``
setting (:mod:`instruments.settings`): the range (the tighter of the
model's rating and lab.yaml ``attenuation_min``/``attenuation_max``) and the
largest single step (``step_max``).  A requested value is rounded to the
model's step (0.25 dB, 1 dB) and the read-back must equal it.

Nothing to de-energise: the safe state is "as it is".

* :class:`MiniCircuitsRCDAT` follows the Mini-Circuits "Programmable
  Attenuators Programming Manual", section "Ethernet Control - Telnet":
  commands ``:MN?`` (``MN=RCDAT-6000-110``: the last field is the maximum
  attenuation), ``:SN?`` (``SN=12345678901``), ``:SETATT=<dB>`` (answers
  ``1`` done, ``0`` failed, ``2`` above the maximum) and ``:ATT?``.  It has
  no ``*IDN?``: :meth:`identify` builds the identity from model and serial.
  Its Telnet port is 23 (``TCPIP::10.0.0.8::23::SOCKET``).
* :class:`Keysight11713` follows the Keysight 11713B/C Attenuator/Switch
  Driver User's Guide, "SCPI Command Reference", ATTenuator subsystem:
  ``ATT:BANK1:X <dB>`` and ``ATT:BANK1:Y <dB>`` for the two step
  attenuators of bank 1 (X: an 8494 0-11 dB in 1 dB steps; Y: an 8495
  0-70 dB in 10 dB steps), their queries, and ``*IDN?``.

Example::

    with MiniCircuitsRCDAT("attenuator_ppmid", "TCPIP::10.0.0.8::23::SOCKET", limits=cfg.limits) as att:
        att.set(40)            # dB; refused if out of range or a larger step than step_max
        print(att.db)          # 40.0, read back from the attenuator
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InstrumentError
from .limits import Range
from .settings import Setting
from .visa import VisaInstrument


class Attenuator(VisaInstrument):
    """What every programmable attenuator driver shares."""

    #: the model's attenuation: its step (resolution) and rating (None: read from the instrument)
    attenuation = Setting("attenuation", "dB", rating=(0.0, None), low="attenuation_min", high="attenuation_max",
                          step="step_max", resolution=1.0, zero_limit=True)

    @property
    def range(self) -> Range:
        """The attenuation this attenuator accepts (rating and lab.yaml limits)."""
        return self.setting("attenuation").range(self)

    @property
    def db(self) -> float:
        """The attenuation now set, read back from the attenuator (dB)."""
        raise NotImplementedError

    def set(self, db: float) -> float:
        """Set the attenuation (dB), checked for range and step first;
        returns the read-back."""
        setting = self.setting("attenuation")
        target = setting.check(self, db)
        now = self.db
        setting.check_step(self, now, target)
        self._apply(target, now)
        got = self.db
        self.confirm("attenuation", target, got)
        return got

    def _apply(self, target: float, now: float) -> None:
        raise NotImplementedError


class MiniCircuitsRCDAT(Attenuator):
    """Mini-Circuits RCDAT-series programmable attenuator over Telnet."""

    model = "Mini-Circuits RCDAT"
    attenuation = Setting("attenuation", "dB", get=":ATT?", rating=(0.0, None), low="attenuation_min",
                          high="attenuation_max", step="step_max", resolution=0.25, zero_limit=True)
    write_termination = "\r\n"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._model_max: float | None = None     # the maximum attenuation its model name gives

    def rating_of(self, setting: Setting) -> tuple[float | None, float | None]:
        if setting is MiniCircuitsRCDAT.attenuation and self._model_max is not None:
            return (0.0, self._model_max)
        return setting.rating

    def identify(self) -> str:
        model = self._field(":MN?", "MN")
        serial = self._field(":SN?", "SN")
        return f"Mini-Circuits,{model},{serial}"

    def _field(self, query: str, key: str) -> str:
        answer = self.query(query)
        if not answer.startswith(f"{key}="):
            raise InstrumentError(self.name, self.address, f"{query} answered {answer!r}, expected {key}=...")
        return answer[len(key) + 1:]

    def configure(self) -> None:
        """The model's maximum attenuation is the last field of its name."""
        model = (self.identity or "").split(",")[1] if self.identity else ""
        m = re.search(r"-(\d+(?:\.\d+)?)$", model)
        if m:
            self.model = f"Mini-Circuits {model}"
            self._model_max = float(m.group(1))

    @property
    def db(self) -> float:
        return float(MiniCircuitsRCDAT.attenuation.read(self))

    def _apply(self, target: float, now: float) -> None:
        answer = self.query(f":SETATT={target:.2f}")
        if answer != "1":
            meaning = {"0": "failed", "2": "above the attenuator's maximum"}.get(answer, f"answered {answer!r}")
            raise InstrumentError(self.name, self.address, f":SETATT={target:.2f} {meaning}")


class Keysight11713(Attenuator):
    """Keysight 11713B/C driving an 8494 (X, 0-11 dB) and an 8495 (Y, 0-70 dB)."""

    model = "Keysight 11713 with 8494/8495"
    #: the two sections of bank 1: X an 8494 (0-11 dB, 1 dB steps), Y an 8495 (0-70 dB, 10 dB steps)
    X_MAX, Y_MAX, Y_STEP = 11, 70, 10
    attenuation = Setting("attenuation", "dB", rating=(0.0, float(X_MAX + Y_MAX)), low="attenuation_min",
                          high="attenuation_max", step="step_max", resolution=1.0, zero_limit=True)

    def sections(self) -> tuple[int, int]:
        """The (X, Y) settings now, read back, dB."""
        return int(round(self.query_float("ATT:BANK1:X?"))), int(round(self.query_float("ATT:BANK1:Y?")))

    @property
    def db(self) -> float:
        return float(sum(self.sections()))

    def split(self, db: float) -> tuple[int, int]:
        """(X, Y) settings for a total, the fewest dB on the fine section."""
        total = int(round(db))
        y = min(self.Y_MAX, (total // self.Y_STEP) * self.Y_STEP)
        return total - y, y

    def _apply(self, target: float, now: float) -> None:
        (x, y), (old_x, old_y) = self.split(target), self.sections()
        # Raise attenuation before lowering it, so that the path never passes
        # through a setting with less attenuation than both ends (a 39 -> 40 dB
        # step must not visit 30 dB on the way).
        writes = [(x - old_x, f"ATT:BANK1:X {x}"), (y - old_y, f"ATT:BANK1:Y {y}")]
        for _delta, command in sorted((w for w in writes if w[0] != 0), key=lambda w: -w[0]):
            self.write(command)
