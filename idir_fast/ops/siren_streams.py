"""Analytic derivative streams in plain PyTorch: Φ, ∂Φ and ∂²Φ of the SIREN in one forward pass.

Every point carries ``S`` streams through the network instead of one vector (see ``shared/notes/engine-math.md``):
the value ``h`` (S = 1), plus first derivatives ``h_i`` (S = 4), plus the 6 unique second derivatives ``h_ab``
(S = 10), held as one ``(S, N, width)`` tensor so each linear layer is one matrix product over all streams.

A linear map acts on every stream alike and the bias only on the value. A sine layer with
``s = sin(ωz)``, ``c = ω cos(ωz)``, ``q = −ω² sin(ωz)`` maps

    a = s,   a_i = c ⊙ z_i,   a_ab = c ⊙ z_ab + q ⊙ z_a ⊙ z_b.

The input streams are ``x``, the unit vectors and zeros, so the first layer's derivative streams are
per-point constants times ``W_0`` columns. Gradients w.r.t. the parameters come from autograd over this forward
(one backward pass), which measured faster on CPU than a hand-written adjoint in PyTorch
(``benchmarks/backward_choice.py``, README).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..core.derivatives import PAIRS


def _sine_streams(z: torch.Tensor, bias: torch.Tensor, omega: float, order: int, first_layer_w=None) -> torch.Tensor:
    """Add the bias to the value stream and apply the sine to pre-activation streams.

    Args:
        z: ``(S, N, H)`` pre-activation streams without bias, or ``(N, H)`` values only when ``first_layer_w``
            is given.
        first_layer_w: ``(H, 3)`` first-layer weights; then ``z_i = W[:, i]`` and ``z_ab = 0``.
    """
    if first_layer_w is not None:
        z0, zi, zab = z + bias, first_layer_w.unbind(1), None
    else:
        # unbind (not indexing): its backward stacks the stream gradients in one pass instead of
        # scattering each into a zero-filled copy of the whole tensor
        streams = z.unbind(0)
        z0, zi, zab = streams[0] + bias, streams[1:4], streams[4:]
    s = torch.sin(omega * z0)
    if order == 0:
        return s.unsqueeze(0)
    c = omega * torch.cos(omega * z0)
    out = [s] + [c * zi[i] for i in range(3)]
    if order >= 2:
        q = (-omega * omega) * s
        for p, (a, b) in enumerate(PAIRS):
            term = q * (zi[a] * zi[b])
            out.append(term if zab is None else c * zab[p] + term)
    return torch.stack(out)


def siren_streams(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int) -> torch.Tensor:
    """Output streams of the SIREN displacement ``u``.

    Args:
        params: ``[W_0, b_0, …, W_out, b_out]`` with ``W_l`` of shape ``(out, in)``.
        omega: ω of every sine layer.
        x: ``(N, 3)`` normalised points.
        order: 0, 1 or 2.

    Returns:
        ``(S, N, 3)`` with S = 1, 4, 10: ``u``, ``∂u/∂x_i`` (i = 0..2), ``∂²u/∂x_a∂x_b`` (:data:`PAIRS` order).
    """
    w0, b0 = params[0], params[1]
    h = _sine_streams(x @ w0.T, b0, omega, order, first_layer_w=w0)
    for layer in range(1, len(params) // 2):
        w, b = params[2 * layer], params[2 * layer + 1]
        S, N, width = h.shape
        z = (h.reshape(S * N, width) @ w.T).reshape(S, N, -1)
        if layer == len(params) // 2 - 1:  # the linear output layer: 3 columns, cheap to rebuild
            return torch.cat([(z[0] + b).unsqueeze(0), z[1:]]) if S > 1 else z + b
        h = _sine_streams(z, b, omega, order)
    raise ValueError("params must hold at least one sine layer and the output layer")


# ------------------------------------------------------------------------------------------------------------
# The fused path: matrix products by torch, the element-wise stream algebra of each layer in one pass of a
# compiled kernel (``csrc/sine_streams_cpu.cpp`` on the CPU, the Triton kernels on a GPU), and the exact adjoint
# as the backward. The layout of a layer's saved tensors: ``inputs[l]`` the streams entering hidden layer ``l+1``
# (and the output layer), ``zs[l]`` the pre-activations of sine layer ``l`` (the first one holds values only).
def streams_backward(grad_u, x, params, inputs, zs, omega: float, order: int, sine_backward, matmul,
                     workspace: "Optional[StreamWorkspace]" = None, reduce_rows=None):
    """Parameter gradients of the stream forward, given ``∂L/∂u`` ``(S, N, 3)``.

    Args:
        sine_backward: ``(ā (S, N, M), z, first: bool, out) → z̄`` — the layer adjoint (engine-math note), written
            into ``out`` when that is not ``None``.
        matmul: ``(a, b, out=None) → a @ b`` in the caller's precision.
        workspace: the run's :class:`StreamWorkspace`: the large adjoints ``ā``, ``z̄`` are written into its two
            buffers instead of new tensors (``None``: new tensors).
        reduce_rows: ``(a (R, m), b (R, n)) → aᵀ b`` for the weight gradients, the products that sum over all
            ``S·N`` rows (default: ``matmul(a.T, b)``); the CPU passes :func:`rows_product`, whose summation order
            does not depend on the thread count.

    Returns:
        the gradients of ``params`` in their order.
    """
    P = len(params)
    L = P // 2 - 1  # sine layers
    grads = [None] * P
    g = grad_u.contiguous()
    S, n = g.shape[0], g.shape[1]
    buffer = (lambda kind, m: None) if workspace is None else workspace.adjoint

    def product(a, b, kind):
        out = buffer(kind, b.shape[1])
        return matmul(a, b, out=None if out is None else out.view(S * n, -1)).reshape(S, n, -1)

    def reduce(a, b):
        return matmul(a.T, b) if reduce_rows is None else reduce_rows(a, b)

    h = inputs[-1]
    g2 = g.reshape(S * n, -1)
    grads[-2] = reduce(g2, h.reshape(S * n, -1))
    grads[-1] = g[0].sum(0)
    ga = product(g2, params[-2], "a")
    for layer in range(L - 1, 0, -1):
        gz = sine_backward(ga, zs[layer], False, buffer("z", ga.shape[2]))
        w, h = params[2 * layer], inputs[layer - 1]
        gz2 = gz.reshape(S * n, -1)
        grads[2 * layer] = reduce(gz2, h.reshape(S * n, -1))
        grads[2 * layer + 1] = gz[0].sum(0)
        ga = product(gz2, w, "a")
    gz = sine_backward(ga, zs[0], True, buffer("z", ga.shape[2]))
    gw0 = reduce(gz[0], x)  # a rank-3 input: tiny
    if order >= 1:
        gw0 = gw0 + torch.stack([gz[1 + i].sum(0) for i in range(3)], dim=1)
    grads[0], grads[1] = gw0, gz[0].sum(0)
    return grads


class StreamWorkspace:
    """How a step computes the streams on the CPU, and the buffers it does it in: with ``fused`` (the default
    ``RunSettings.cpu_kernels``), the compiled kernels, with the large tensors (forward activations kept for the
    backward, the backward's adjoints) made once per run and written in place every step; otherwise PyTorch's
    ops (the same maths in another float32 rounding order; they allocate as they go).

    Why: a step at the paper's size moves ~1 GB through tensors of 100 MB each; allocated afresh every step, glibc
    maps them from the OS and zero-fills them again through page faults (~200,000 per step). Reused, the step
    allocates only small tensors. One workspace serves one step object (one pair, any point count: a stage with
    other batch sizes gets its own buffers, kept too).

    Args:
        hidden: the sine layers' widths.
        order: the derivative order (streams S = 1, 4, 10).
        dtype: float32 or float64.
        fused: compiled kernels with these buffers (``True``) or PyTorch's ops (``False``).
    """

    def __init__(self, hidden: Sequence[int], order: int, dtype: torch.dtype, fused: bool = True):
        self.hidden, self.order, self.dtype = tuple(int(w) for w in hidden), int(order), dtype
        self.fused = bool(fused)
        self.S = (1, 4, 10)[self.order]
        self._by_n: dict = {}
        self._adjoint: dict = {}
        self._partials: Optional[torch.Tensor] = None
        self.n = None

    def forward_buffers(self, n: int) -> dict:
        """Per layer ``z`` (pre-activations; the first layer's holds the value stream only), ``s``, ``c`` (sin ωz and
        ω cos ωz), ``a`` (the layer's output streams), a scratch ``wz``, and the output ``u`` — for ``n`` points."""
        if n not in self._by_n:
            S, new = self.S, (lambda *shape: torch.empty(shape, dtype=self.dtype))
            self._by_n[n] = {
                "z": [new(1 if k == 0 else S, n, m) for k, m in enumerate(self.hidden)],
                "s": [new(n, m) for m in self.hidden], "c": [new(n, m) for m in self.hidden],
                "a": [new(S, n, m) for m in self.hidden], "wz": new(n, max(self.hidden)),
                "u": new(S, n, 3),
            }
        self.n = n
        return self._by_n[n]

    def adjoint(self, kind: str, width: int) -> torch.Tensor:
        """A ``(S, n, width)`` buffer for the backward (``kind`` "a": ``ā``, "z": ``z̄``) of the current point count;
        one per kind, shared by the layers (each layer's adjoint is used up before the next one is written)."""
        key = (kind, self.n)
        size = self.S * self.n * max(self.hidden)
        if key not in self._adjoint:
            self._adjoint[key] = torch.empty(size, dtype=self.dtype)
        return self._adjoint[key][: self.S * self.n * width].view(self.S, self.n, width)

    def partials(self, count: int, rows: int, cols: int) -> torch.Tensor:
        """A ``(count, rows, cols)`` buffer for the partial products of :func:`rows_product` (one, grown as needed:
        the weight gradients are computed one after another)."""
        size = count * rows * cols
        if self._partials is None or self._partials.numel() < size:
            self._partials = torch.empty(size, dtype=self.dtype)
        return self._partials[:size].view(count, rows, cols)

    def nbytes(self) -> int:
        """Bytes held (all point counts used so far)."""
        tensors = [t for b in self._by_n.values() for v in b.values() for t in (v if isinstance(v, list) else [v])]
        tensors += [] if self._partials is None else [self._partials]
        return sum(t.numel() * t.element_size() for t in tensors + list(self._adjoint.values()))


def _mm(a, b, out=None):
    return a @ b if out is None else torch.mm(a, b, out=out)


ROWS_PER_PARTIAL = 512
"""Rows per partial product of :func:`rows_product`: small enough that BLAS computes each one on one thread."""


def rows_product(a: torch.Tensor, b: torch.Tensor, workspace: "Optional[StreamWorkspace]" = None) -> torch.Tensor:
    """``aᵀ b`` for ``a`` ``(R, m)``, ``b`` ``(R, n)``, summed in an order fixed by ``R`` alone: partial products of
    :data:`ROWS_PER_PARTIAL` consecutive rows (one batched product), then their sum in order.

    Why: a plain ``a.T @ b`` with many rows and a small result lets BLAS split the rows among threads (MKL does on
    AVX-512 CPUs), so the float32 sum, and with it a whole registration, changed with the thread count; a partial
    of 512 rows runs on one thread and the sum over partials is an element-wise reduction ATen splits by output.
    With a ``workspace`` the partials go into its buffer (no allocation of their size per step).
    """
    rows = a.shape[0]
    full = rows // ROWS_PER_PARTIAL
    head = full * ROWS_PER_PARTIAL
    tail = (a[head:].T @ b[head:]) if rows > head or not full else None
    if not full:
        return tail
    pa = a[:head].reshape(full, ROWS_PER_PARTIAL, -1).transpose(1, 2)
    pb = b[:head].reshape(full, ROWS_PER_PARTIAL, -1)
    if workspace is None:
        total = torch.bmm(pa, pb).sum(0)
    else:
        total = torch.bmm(pa, pb, out=workspace.partials(full, a.shape[1], b.shape[1])).sum(0)
    return total if tail is None else total + tail


class _CpuStreamsFunction(torch.autograd.Function):
    """Forward and exact backward of the streams with the compiled CPU kernels for the element-wise part: the bias
    added and ``sin``/``ω cos`` taken by ATen's vectorised ops (kept for the backward), the rest of each layer's
    stream algebra and its adjoint in one pass of ``idir_fast._C``. With a :class:`StreamWorkspace` every large
    tensor is one of its buffers (the same arithmetic, bit for bit)."""

    @staticmethod
    def forward(ctx, x, omega, order, workspace, *params):
        from .sample_ncc import extension

        ext = extension()
        S = (1, 4, 10)[order]
        n = x.shape[0]
        empty = params[0].new_empty(0)
        buf = workspace.forward_buffers(n) if workspace is not None else None
        inputs, zs, trig, a = [], [], [], None
        if buf is None:
            z = torch.addmm(params[1], x, params[0].T).unsqueeze(0)  # the first layer: values only
        else:
            z = buf["z"][0]
            torch.addmm(params[1], x, params[0].T, out=z[0])
        for layer in range(len(params) // 2 - 1):
            if layer:
                w, b = params[2 * layer], params[2 * layer + 1]
                inputs.append(a)
                if buf is None:
                    z = (a.reshape(S * n, -1) @ w.T).reshape(S, n, -1)
                else:
                    z = buf["z"][layer]
                    torch.mm(a.view(S * n, -1), w.T, out=z.view(S * n, -1))
                z[0] += b
            if buf is None:
                wz = omega * z[0]
                s, c = torch.sin(wz), omega * torch.cos(wz)
                a = ext.sine_streams_forward(z, params[0] if layer == 0 else empty, s, c, omega, order)
            else:
                m = z.shape[2]
                wz = buf["wz"].view(-1)[: n * m].view(n, m)
                s, c, a = buf["s"][layer], buf["c"][layer], buf["a"][layer]
                torch.mul(z[0], omega, out=wz)
                torch.sin(wz, out=s)
                torch.cos(wz, out=c)
                c.mul_(omega)
                ext.sine_streams_forward_out(z, params[0] if layer == 0 else empty, s, c, omega, order, a)
            zs.append(z)
            trig += [s, c]
        inputs.append(a)
        if buf is None:
            u = (a.reshape(S * n, -1) @ params[-2].T).reshape(S, n, -1)
        else:
            torch.mm(a.view(S * n, -1), params[-2].T, out=buf["u"].view(S * n, -1))
            u = buf["u"].detach()  # a new tensor object on the buffer (autograd records its history on it)
        u[0] += params[-1]
        ctx.omega, ctx.order, ctx.n_params, ctx.n_layers = omega, order, len(params), len(zs)
        ctx.workspace = workspace
        ctx.save_for_backward(x, *params, *inputs, *zs, *trig)
        return u

    @staticmethod
    def backward(ctx, grad_u):
        from .sample_ncc import extension

        ext = extension()
        saved, P, L = ctx.saved_tensors, ctx.n_params, ctx.n_layers
        x, params = saved[0], saved[1:1 + P]
        inputs, zs, trig = saved[1 + P:1 + P + L], saved[1 + P + L:1 + P + 2 * L], saved[1 + P + 2 * L:]
        empty = params[0].new_empty(0)
        layer_of = {id(z): k for k, z in enumerate(zs)}

        def sine_backward(ga, z, first, out=None):
            k = layer_of[id(z)]
            w0 = params[0] if first else empty
            if out is None:
                return ext.sine_streams_backward(ga.contiguous(), z, w0, trig[2 * k], trig[2 * k + 1], ctx.omega,
                                                 ctx.order)
            ext.sine_streams_backward_out(ga.contiguous(), z, w0, trig[2 * k], trig[2 * k + 1], ctx.omega,
                                          ctx.order, out)
            return out

        grads = streams_backward(grad_u, x, params, inputs, zs, ctx.omega, ctx.order, sine_backward, _mm,
                                 workspace=ctx.workspace,
                                 reduce_rows=lambda a, b: rows_product(a, b, ctx.workspace))
        return (None, None, None, None, *grads)


FUSED_MAX_WIDTH = 96
FUSED_MAX_ELEMENTS = 200_000
"""``cpu_kernels="auto"``: the compiled kernels for networks up to :data:`FUSED_MAX_WIDTH` wide at any point count,
wider ones while points × widest layer ≤ :data:`FUSED_MAX_ELEMENTS`; PyTorch's ops beyond, where ATen's element-wise
ops run the larger stream tensors faster than the fused pass (docs/measurements.md, "Fused CPU kernels")."""


def fused_pays(points: int, widest: int) -> bool:
    """Whether the fused CPU kernels are the faster choice for a step of ``points`` through ``widest`` units."""
    return widest <= FUSED_MAX_WIDTH or points * widest <= FUSED_MAX_ELEMENTS


def fused_available(x: torch.Tensor, params: Sequence[torch.Tensor] = ()) -> bool:
    """Whether :func:`siren_streams_fused` can run for points ``x``: CPU tensors of float32/float64 and the
    compiled op built with its stream kernels."""
    from .sample_ncc import extension

    ext = extension()
    return (x.device.type == "cpu" and ext is not None and hasattr(ext, "sine_streams_forward_out")
            and x.dtype in (torch.float32, torch.float64))


def siren_streams_fused(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int,
                        workspace: Optional[StreamWorkspace] = None) -> torch.Tensor:
    """:func:`siren_streams` through the compiled CPU kernels (same contract, differentiable w.r.t. ``params``);
    with a ``workspace`` the large tensors are its buffers (then the result is valid until the next call).

    Not usable under ``torch.func.vmap`` (the batched-pairs step uses :func:`siren_streams`)."""
    return _CpuStreamsFunction.apply(x.contiguous(), float(omega), int(order), workspace,
                                     *[p.contiguous() for p in params])


def evaluate_streams(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int,
                     workspace: Optional[StreamWorkspace] = None) -> torch.Tensor:
    """The streams at ``x`` without gradients, for writing fields: through the compiled kernels into
    ``workspace`` on a CPU (the evaluation of a whole grid chunk by chunk then allocates nothing large), else
    :func:`siren_streams`. The result is valid until the next call with the same workspace."""
    with torch.no_grad():
        if workspace is not None and workspace.fused and fused_available(x):
            return siren_streams_fused(params, omega, x, order, workspace)
        return siren_streams(params, omega, x, order)
