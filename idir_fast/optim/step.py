"""One optimisation step: forward, ``−NCC + α·R``, backward, Adam — for one pair, or for several at once.

Both steps have the same call: ``step(x (P, B, 3), f (P, B)) → (P, 3)`` losses ``(loss, −NCC, R)`` per pair, with
P = 1 for :class:`PairStep`. Everything a step needs is made when the step is built, so a step issues only
device work: no tensors from host data, no host reads (the capture-safety test checks this for every backend ×
regulariser), and it can be captured as a CUDA graph.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import numpy as np

import torch
from torch.func import vmap

from ..backends import BackendChoice, self_check
from ..core.derivatives import Derivatives, derivatives_from_streams
from ..core.objectives import SIMILARITIES, fold_guard_penalty
from ..core.sampling import trilinear_with_gradient
from ..core.siren import Siren
from ..ops.siren_streams import siren_streams
from ..settings import RunSettings
from .adam import make_adam
from .local_similarity import LocalNCC
from .prepare import PreparedPair

HISTORY_TERMS = ("loss", "similarity", "regularization")


def regularizer_points(batch: int, share: float) -> int:
    """Points of a step's batch of ``batch`` at which the regulariser is evaluated (``RunSettings.regularizer_share``):
    the first ``round(share · batch)``, at least one. The batch is a random draw from the mask, so its head is one
    too: the regulariser's mean over it estimates the same expectation over the mask, from fewer points."""
    return batch if share >= 1.0 else max(1, min(batch, int(round(batch * share))))


def similarity_order(similarity: str) -> int:
    """Derivative order of Φ a similarity needs at every point: 1 with the local NCC (its neighbourhoods follow
    Φ's Jacobian), else 0."""
    return 1 if "lncc" in similarity else 0


def head(d: Derivatives, k: int) -> Derivatives:
    """The derivatives at the first ``k`` points."""
    return Derivatives(*(None if t is None else t[:k] for t in d))


def joined(first: Derivatives, rest: Derivatives) -> Derivatives:
    """The derivatives at the points of ``first`` then ``rest``: Φ, and J where both have it (the Hessian only
    ever serves the regulariser, which sees ``first`` alone)."""
    J = None if first.J is None or rest.J is None else torch.cat([first.J, rest.J])
    return Derivatives(torch.cat([first.phi, rest.phi]), J, None)


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device):
    """cuBLAS may use single-pass TF32 exactly when ``precision == "tf32"`` (the Triton kernels handle
    ``tf32x3`` themselves); no effect on CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class _Objective:
    """``(loss, −NCC, R)`` of one pair from Φ and its derivatives: the one assembly of the objective,
    ``loss = −NCC + α·R (+ β·G, the fold guard, when the settings weigh it)``."""

    def __init__(self, settings: RunSettings, backend, pair: PreparedPair, similarity: str = "ncc"):
        if similarity not in SIMILARITIES:
            raise ValueError(f"'similarity' must be one of {SIMILARITIES}, got {similarity!r}")
        self.spec = settings.regularizer_spec
        self.alpha, self.compat = float(settings.alpha), settings.compat
        self.fold_guard = float(settings.fold_guard or 0.0) if self.spec.order >= 1 else 0.0
        self.similarity = backend.similarity
        self.uses_global = similarity in ("ncc", "ncc+lncc")
        self.local = (LocalNCC(pair, settings.lncc_spacing, backend.sample, backend.local_moments)
                      if "lncc" in similarity else None)
        self.moving, self.moving_weights = pair.moving, pair.moving_weights
        self.lin, self.off = pair.moving_index_affine()
        self.zero = torch.zeros((), dtype=pair.points.dtype, device=pair.points.device)

    def __call__(self, d: Derivatives, f: torch.Tensor, x: torch.Tensor, at: Optional[Derivatives] = None):
        """The terms at points ``x`` with Φ's derivatives ``d`` there; the regulariser and the fold guard at the
        points of ``at`` (the head of the batch, :func:`regularizer_points`; ``None``: every point)."""
        at = d if at is None else at
        index = d.phi @ self.lin + self.off
        weights = None
        if self.moving_weights is not None:  # only points mapped into the moving mask count (a constant weight)
            weights = trilinear_with_gradient(self.moving_weights, index.detach())[0]
        terms = []
        if self.uses_global:
            terms.append(self.similarity(self.moving, index, f, self.compat, *(() if weights is None else (weights,))))
        if self.local is not None:
            terms.append(self.local(d, x, weights))
        sim = -terms[0] if len(terms) == 1 else -0.5 * (terms[0] + terms[1])
        if self.spec.penalty is None:
            return sim, sim, self.zero
        reg = self.spec.penalty(at.J, at.H6, self.compat)
        loss = sim + self.alpha * reg
        if self.fold_guard:  # only where det J < FOLD_GUARD_DET; the history's R stays the regulariser's own
            loss = loss + self.fold_guard * fold_guard_penalty(at.J)
        return loss, sim, reg


class PairStep:
    """The step of one pair with any backend.

    Args:
        siren: the network (its parameters are optimised in place).
        pair: the prepared pair.
        choice: the backend choice; its first-use self-check runs here (and may fall back).
        settings: resolved settings.
        capturable: keep Adam's state on the device for CUDA-graph capture.
    """

    def __init__(self, siren: Siren, pair: PreparedPair, choice: BackendChoice, settings: RunSettings,
                 capturable: bool = False):
        self.params = siren.parameter_list()
        self.omega, self.order, self.precision = float(siren.omega), settings.order, settings.precision
        self.device = pair.points.device
        self.choice = self_check(choice, self.params, self.omega, self.order, self.precision, settings.cpu_kernels,
                                 settings.self_check)
        self.backend = self.choice.backend
        self.settings = settings
        self.first_similarity = settings.stages()[0].similarity
        self.share = float(settings.regularizer_share or 1.0)
        # the backend's buffers for the large tensors of a step, made once and reused (no per-step allocation);
        # with a regulariser share below 1 another set, per order, for the points only the similarity sees
        self.workspace = self.backend.workspace(siren.hidden, self.order, self.params[0].dtype, self.device,
                                                settings.cpu_kernels)
        self._hidden, self._rest_workspaces = siren.hidden, {}
        self.set_pairs([pair])
        self.optimizer = make_adam(self.params, settings.lr, self.device, capturable)

    def set_pairs(self, pairs: Sequence[PreparedPair], similarity: Optional[str] = None) -> None:
        """Train on these images with this similarity from now on (a new stage: e.g. less smoothed; ``None``: the
        first stage's); the points stay the same."""
        similarity = similarity or self.first_similarity
        self.objective = _Objective(self.settings, self.backend, pairs[0], similarity)
        self.rest_order = min(self.order, similarity_order(similarity))
        if self.share < 1.0 and self.rest_order < self.order and self.rest_order not in self._rest_workspaces:
            self._rest_workspaces[self.rest_order] = self.backend.workspace(
                self._hidden, self.rest_order, self.params[0].dtype, self.device, self.settings.cpu_kernels)

    def _derivatives(self, x: torch.Tensor, order: int, workspace) -> Derivatives:
        return self.backend.derivatives(self.params, self.omega, x, order, self.precision, workspace=workspace)

    def losses(self, x: torch.Tensor, f: torch.Tensor):
        """``(loss, −NCC, R)`` at points ``x`` ``(B, 3)`` with fixed values ``f`` ``(B,)`` (differentiable).

        With a regulariser share below 1 the regulariser's order runs through the head of the batch only and the
        rest carries what the stage's similarity needs (:func:`similarity_order`): one pass of each."""
        k = regularizer_points(x.shape[0], self.share)
        if k >= x.shape[0]:
            return self.objective(self._derivatives(x, self.order, self.workspace), f, x)
        if self.rest_order >= self.order:  # the similarity needs every stream anyway: one pass
            d = self._derivatives(x, self.order, self.workspace)
            return self.objective(d, f, x, head(d, k))
        at = self._derivatives(x[:k], self.order, self.workspace)
        rest = self._derivatives(x[k:], self.rest_order, self._rest_workspaces[self.rest_order])
        return self.objective(joined(at, rest), f, x, at)

    def __call__(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        with matmul_precision(self.precision, self.device):
            loss, sim, reg = self.losses(x[0], f[0])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return torch.stack([loss.detach(), sim.detach(), reg.detach()]).unsqueeze(0)


class BatchedStep:
    """The step of ``P`` pairs at once: a leading pair dimension on the weights and the Adam state, so every
    layer is one batched matrix product over all pairs (``torch.func.vmap`` over the torch derivative streams).

    The loss is the sum of the per-pair losses, whose parameters are disjoint, and Adam is elementwise, so each
    pair follows the trajectory it follows alone with the same seed.

    Args:
        sirens: one network per pair, same architecture.
        pairs: the prepared pairs.
        choice: must be a batchable backend (``torch``).
        settings: resolved settings.
    """

    def __init__(self, sirens: Sequence[Siren], pairs: Sequence[PreparedPair], choice: BackendChoice,
                 settings: RunSettings, capturable: bool = False):
        if not choice.backend.batchable:
            raise ValueError(f"backend {choice.name!r} cannot run several pairs in one batched step")
        self.device = pairs[0].points.device
        per_pair = [s.parameter_list() for s in sirens]
        self.params = [torch.nn.Parameter(torch.stack([p[k].detach() for p in per_pair]).to(self.device))
                       for k in range(len(per_pair[0]))]
        self.omega, self.order, self.precision = float(sirens[0].omega), settings.order, settings.precision
        self.choice = self_check(choice, [p[0].detach() for p in self.params], self.omega, self.order,
                                 self.precision, "ops", settings.self_check)  # under vmap: PyTorch's ops
        self.backend = self.choice.backend
        self.settings = settings
        self.first_similarity = settings.stages()[0].similarity
        self.share = float(settings.regularizer_share or 1.0)
        omega = self.omega
        self._streams_of = {k: vmap(lambda p, x, k=k: siren_streams(p, omega, x, k), in_dims=(0, 0))
                            for k in range(self.order + 1)}  # per order: the head's and the rest's (PairStep)
        self._streams = self._streams_of[self.order]
        self.set_pairs(pairs)
        self.optimizer = make_adam(self.params, settings.lr, self.device, capturable)

    def set_pairs(self, pairs: Sequence[PreparedPair], similarity: Optional[str] = None) -> None:
        """Train on these images with this similarity from now on (a new stage); one per pair, in order."""
        similarity = similarity or self.first_similarity
        self.objectives = [_Objective(self.settings, self.backend, p, similarity) for p in pairs]
        self.rest_order = min(self.order, similarity_order(similarity))

    def _pair_derivatives(self, x: torch.Tensor):
        """Per pair ``(derivatives at every point, at the regulariser's points or None)`` and the value streams
        ``(P, 1, B, 3)``, the batch split as :meth:`PairStep.losses` splits it."""
        k = regularizer_points(x.shape[1], self.share)
        if k >= x.shape[1] or self.rest_order >= self.order:
            u = self._streams(self.params, x)  # (P, S, B, 3)
            ds = [derivatives_from_streams(x[i], u[i], self.order) for i in range(x.shape[0])]
            return [(d, None if k >= x.shape[1] else head(d, k)) for d in ds], u[:, :1]
        u_at = self._streams(self.params, x[:, :k])
        u_rest = self._streams_of[self.rest_order](self.params, x[:, k:])
        out = []
        for i in range(x.shape[0]):
            at = derivatives_from_streams(x[i, :k], u_at[i], self.order)
            out.append((joined(at, derivatives_from_streams(x[i, k:], u_rest[i], self.rest_order)), at))
        return out, torch.cat([u_at[:, :1], u_rest[:, :1]], dim=2)

    def pair_parameters(self, i: int) -> List[torch.Tensor]:
        """Pair ``i``'s parameters (detached views)."""
        return [p[i].detach() for p in self.params]

    def __call__(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        with matmul_precision(self.precision, self.device):
            derivs, values = self._pair_derivatives(x)
            losses = [objective(d, f[i], x[i], at)
                      for i, (objective, (d, at)) in enumerate(zip(self.objectives, derivs))]
            extra = self.coupling(x, values)
            total = sum(loss for loss, _, _ in losses) + (0.0 if extra is None else extra.sum())
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
        self.optimizer.step()
        rows = [torch.stack([(loss if extra is None else loss + extra[i]).detach(), sim.detach(), reg.detach()])
                for i, (loss, sim, reg) in enumerate(losses)]
        return torch.stack(rows)

    def coupling(self, x: torch.Tensor, u: torch.Tensor) -> Optional[torch.Tensor]:
        """Terms that couple the pairs' networks, one per pair ``(P,)``, from the points ``x`` ``(P, B, 3)`` and the
        value streams ``u`` ``(P, 1, B, 3)`` (none here; see :class:`SymmetricStep`)."""
        return None


class SymmetricStep(BatchedStep):
    """A forward network Φ (fixed → moving) and a backward network Ψ (moving → fixed) trained together, as two
    pairs of one batched step, plus the cycle-consistency term of ccIDIR (Van Harten et al.):
    ``α_cycle · (mean ‖Ψ(Φ(x)) − x‖² + mean ‖Φ(Ψ(y)) − y‖²)`` in mm², at the step's points of each pair.

    Pair 0 is (fixed, moving) with its points in the fixed image's network frame; pair 1 is (moving, fixed) in the
    moving image's frame. ``fwd_to_bwd`` is the 4×4 map between the two frames (``W2N_m ∘ A ∘ N2W_f``).
    """

    def __init__(self, sirens, pairs, choice, settings, fwd_to_bwd: np.ndarray, capturable: bool = False):
        super().__init__(sirens, pairs, choice, settings, capturable)
        dev, dt = self.device, pairs[0].points.dtype
        c = torch.as_tensor(fwd_to_bwd, dtype=dt, device=dev)
        ci = torch.as_tensor(np.linalg.inv(fwd_to_bwd), dtype=dt, device=dev)
        self.f2b, self.b2f = (c[:3, :3].T.contiguous(), c[:3, 3].contiguous()), (ci[:3, :3].T.contiguous(),
                                                                                   ci[:3, 3].contiguous())
        # mm per normalised unit, as a matrix on row vectors, of each pair's frame
        self.mm = [torch.as_tensor(np.linalg.inv(p.world_to_normalised)[:3, :3].T, dtype=dt, device=dev)
                   for p in pairs]
        self.alpha_cycle = float(settings.alpha_cycle)
        omega = self.omega
        self._values = vmap(lambda p, q: siren_streams(p, omega, q, 0), in_dims=(0, 0))

    def coupling(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        (fl, fo), (bl, bo) = self.f2b, self.b2f
        phi = x + u[:, 0]  # (2, B, 3): Φ(x0) in the forward frame, Ψ(x1) in the backward frame
        q = torch.stack([phi[0] @ fl + fo, phi[1] @ bl + bo])  # each in the other network's frame
        swapped = [p.flip(0) for p in self.params]  # network 0 evaluates Ψ, network 1 evaluates Φ
        r = q + self._values(swapped, q)[:, 0]
        e0 = ((r[0] @ bl + bo) - x[0]) @ self.mm[0]  # Ψ(Φ(x)) − x, fixed world mm
        e1 = ((r[1] @ fl + fo) - x[1]) @ self.mm[1]  # Φ(Ψ(y)) − y, moving world mm
        return self.alpha_cycle * torch.stack([(e0 * e0).sum(-1).mean(), (e1 * e1).sum(-1).mean()])


__all__ = ["PairStep", "BatchedStep", "SymmetricStep", "HISTORY_TERMS", "make_adam", "matmul_precision",
           "regularizer_points", "similarity_order"]
