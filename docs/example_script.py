"""A rig script: what a lab engineer runs at a bench, by hand.

    rig up --lab lab.yaml            # in one shell (or a real lab's agents)
    python docs/example_script.py    # in another

It powers the bench, draws 10 A through the meter, disables and arms the
supply as a supplier would, enables it from the PPMID and times how long the
power analyser takes to see the load come back.  Leaving the `with` block
releases the bench: every output goes back to its safe state.
"""

from rig import Lab

with Lab.open("lab.yaml") as lab:
    bench = lab.bench("bench-1")                      # lease the bench
    bench.mains.on()                                  # AC source on, mains relay closed
    bench.esme.wait_state(lambda s: s["powered"], timeout=60, what="meter powered")
    bench.load.draw(amps=10)
    print("load side:", bench.analyser.read())

    bench.dcc.disable()                               # supplier, over the head end and the HAN
    bench.analyser.wait_for(lambda r: r.current < 0.5, timeout=30)
    bench.dcc.arm()
    bench.esme.wait_supply("armed")

    t0 = bench.clock.now()
    bench.ppmid.enable()                              # press, then hold, on the PPMID
    live = bench.analyser.wait_for(lambda r: r.current > 9, timeout=30)
    print(f"supply back {live.ts - t0:.1f} lab s after the PPMID press: {live}")
