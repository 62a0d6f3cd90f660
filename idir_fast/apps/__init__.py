"""Applications built on the library: the ``idir-fast`` command (:mod:`.cli`), cohort registration
(:mod:`.cohort`), the benchmark (:mod:`.bench`). Nothing below this package imports it."""
