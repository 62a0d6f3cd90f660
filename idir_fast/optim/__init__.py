"""The optimisation of one or several pairs: the only place where IDIR's training loop lives.

* :mod:`.prepare` — a pair checked and moved to the training device (:class:`PreparedPair`).
* :mod:`.points` — capture-safe batches of mask points (:class:`PointSampler`).
* :mod:`.step` — one step for one pair (:class:`PairStep`, any backend) or several (:class:`BatchedStep`).
* :mod:`.loop` — the loop: sampling, CUDA graph, sync cadence, divergence guard, progress, history.
* :mod:`.run` — from settings and prepared pairs to trained networks (used by ``register`` and
  ``register_many``).
"""
