"""The garbage collector of a long-running gateway process."""

from __future__ import annotations

import gc

GC_THRESHOLDS = (20_000, 50, 100)


def settle_heap() -> None:
    """Once a process has started: move everything alive now (modules, config, the app) out of
    the cyclic garbage collector's sight, and collect young objects less often.

    The gateway allocates a few hundred short-lived objects per callback; with the default
    threshold of 700 the collector ran several times a second, and each full collection walked
    the ~100,000 objects that imports and start-up leave behind and never free (py-spy put a
    tenth of a callback's handling in it). Python's documentation of `gc.freeze` describes this
    use. Cycles made later are still found, at the thresholds above.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
