"""The last module the test forkserver preloads (`support.prewarmed.PRELOAD`): it moves every
object the preload created out of the garbage collector's sight (`gc.freeze`).

Forked agents inherit that state, so the full collection an agent makes after its warm-up
(`silos.memory.release`) walks only its own objects, not the million-odd of torch, Prefect and
the rest that every fork shares with the forkserver (measured: 0.7 s of CPU per agent, and
each walk copied the shared pages it touched). A fresh agent walks them; nothing else differs.
"""

import gc

gc.collect()
gc.freeze()
