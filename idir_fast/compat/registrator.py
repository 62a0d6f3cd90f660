"""``ImplicitRegistrator`` with the released IDIR code's constructor keywords and calls, trained by idir_fast.

The released class takes the moving and the fixed image as 3-D tensors in array order ``(z, y, x)``, works in a
normalised frame per array axis (voxel ``i`` ↦ ``−1 + 2 i / (N − 1)``) and exposes the trained network as a
callable on coordinates of that frame returning the displacement in it. This class keeps those conventions at
its surface; inside, the images become SimpleITK images with 1 mm voxels (the per-axis frame does not depend on
the spacing) and :func:`idir_fast.register` trains with ``compat="idir-2022"``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError

# keyword: (default, what idir_fast does with it)
KEYWORDS: Dict[str, tuple] = {
    "epochs": (2500, "optimisation steps"),
    "lr": (1e-5, "Adam's learning rate"),
    "batch_size": (10000, "points per step"),
    "layers": ([3, 256, 256, 256, 3], "network widths, input and output included"),
    "network_type": ("MLP", "only a SIREN is implemented: any value but 'MLP' (the released code's rule)"),
    "omega": (32, "SIREN frequency ω"),
    "weight_init": (True, "the released SIREN initialisation (False is not implemented)"),
    "optimizer": ("Adam", "Adam (the only optimiser implemented)"),
    "momentum": (0.5, "SGD's momentum: unused with Adam"),
    "loss_function": ("ncc", "NCC (the only similarity implemented)"),
    "jacobian_regularization": (False, "|1 − det J| regulariser"),
    "alpha_jacobian": (0.05, "its weight"),
    "hyper_regularization": (False, "hyperelastic regulariser"),
    "alpha_hyper": (0.25, "its weight"),
    "bending_regularization": (False, "bending energy"),
    "alpha_bending": (10.0, "its weight"),
    "mask": (None, "fixed-image mask (array order): the points are drawn inside it (None: everywhere)"),
    "verbose": (True, "a progress bar; the loss history in loss_list / data_loss_list"),
    "save_folder": ("output", "accepted; nothing is written there (as in the released code)"),
    "gpu": (None, "train on the GPU (default: when one is available)"),
    "network": (None, "a saved network to start from (not implemented)"),
    "seed": (1, "the seed of the initialisation and the point sampling"),
    # accepted and unused, as in the released code
    "image_shape": ((200, 200), "unused"), "log_interval": (None, "unused"), "mask_2": (None, "unused"),
    "method": (1, "unused"), "velocity_steps": (1, "unused"), "output_regularization": (False, "unused"),
    "alpha_output": (0.2, "unused"), "reg_norm_output": (1, "unused"), "positional_encoding": (False, "unused"),
}
REGULARISERS = (("jacobian_regularization", "jacobian", "alpha_jacobian"),
                ("hyper_regularization", "hyperelastic", "alpha_hyper"),
                ("bending_regularization", "bending", "alpha_bending"))


def _array(obj, name: str) -> np.ndarray:
    arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj)
    if arr.ndim != 3:
        raise InputError(f"'{name}' must be a 3-D image in array order (z, y, x), got shape {arr.shape}")
    return arr


def _image(arr: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))  # 1 mm, origin 0, identity


class ReleasedFrameNetwork(torch.nn.Module):
    """The trained SIREN seen in the released code's frame: ``(N, 3)`` normalised coordinates in array order
    ``(z, y, x)`` → the displacement ``u`` in the same frame and order (idir_fast's own frame has the index axes
    in ``(x, y, z)`` order)."""

    def __init__(self, siren):
        super().__init__()
        self.siren = siren

    def forward(self, coordinates: torch.Tensor) -> torch.Tensor:
        p = self.siren.parameter_list()[0]
        x = torch.as_tensor(coordinates).to(device=p.device, dtype=p.dtype).flip(-1)
        with torch.no_grad():
            return self.siren.displacement(x).flip(-1)


class ImplicitRegistrator:
    """The released registrator: ``ImplicitRegistrator(moving_image, fixed_image, **kwargs)``, then ``fit()``.

    Args:
        moving_image, fixed_image: 3-D tensors (or arrays) in array order ``(z, y, x)``, raw intensities.
        **kwargs: the released keywords (:data:`KEYWORDS`); an unknown keyword, several regularisers at once, or a
            value idir_fast does not implement (an MLP, another loss or optimiser) is an
            :class:`~idir_fast.errors.InputError` naming it.

    Attributes:
        network: after :meth:`fit`, the trained network in the released frame (:class:`ReleasedFrameNetwork`).
        registration: the :class:`~idir_fast.registration.Registration` behind it (world = voxel indices, 1 mm).
        loss_list, data_loss_list: the loss and the similarity term per step (``verbose``).
        possible_coordinate_tensor: the normalised coordinates (array order) of the mask's voxels.
    """

    def __init__(self, moving_image, fixed_image, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(KEYWORDS))
        if unknown:
            raise InputError(f"ImplicitRegistrator(): unknown keyword(s) {unknown}; the released code's keywords "
                             f"are {sorted(KEYWORDS)}")
        self.args = {k: kwargs.get(k, default) for k, (default, _) in KEYWORDS.items()}
        self.moving_image = torch.as_tensor(_array(moving_image, "moving_image"), dtype=torch.float32)
        self.fixed_image = torch.as_tensor(_array(fixed_image, "fixed_image"), dtype=torch.float32)
        mask = self.args["mask"]
        self.mask = None if mask is None else np.clip(_array(mask, "mask"), 0, 1)
        if self.mask is not None and self.mask.shape != tuple(self.fixed_image.shape):
            raise InputError(f"'mask' must have the fixed image's shape {tuple(self.fixed_image.shape)}, got "
                             f"{self.mask.shape}")
        self.settings = self._settings(self.args)
        for key, value in self.args.items():  # the released class keeps its settings as attributes
            setattr(self, key, value)
        shape = np.asarray(self.fixed_image.shape)
        inside = np.argwhere(self.mask > 0) if self.mask is not None else np.argwhere(np.ones(shape, bool))
        self.possible_coordinate_tensor = torch.as_tensor(-1.0 + 2.0 * inside / (shape - 1), dtype=torch.float32)
        self.network = self.registration = None
        self.loss_list = self.data_loss_list = None

    @staticmethod
    def _settings(a: dict) -> dict:
        """The released keywords as :class:`~idir_fast.settings.RunSettings` options (``compat="idir-2022"``)."""
        if str(a["network_type"]) == "MLP":
            raise InputError("'network_type': 'MLP' (a ReLU MLP) is not implemented by idir_fast; use 'SIREN'")
        if not a["weight_init"]:
            raise InputError("'weight_init': False (PyTorch's default initialisation of the SIREN) is not "
                             "implemented; idir_fast uses the released SIREN initialisation")
        if str(a["loss_function"]).lower() != "ncc":
            raise InputError(f"'loss_function': {a['loss_function']!r} is not implemented; idir_fast optimises NCC")
        if str(a["optimizer"]).lower() != "adam":
            raise InputError(f"'optimizer': {a['optimizer']!r} is not implemented; idir_fast uses Adam")
        if a["network"] is not None:
            raise InputError("'network': starting from a saved network is not implemented")
        layers = list(a["layers"])
        if len(layers) < 3 or layers[0] != 3 or layers[-1] != 3:
            raise InputError(f"'layers' must be [3, width, …, width, 3], got {layers}")
        chosen = [(name, alpha) for flag, name, alpha in REGULARISERS if a[flag]]
        if len(chosen) > 1:
            raise InputError(f"{[f for f, _, _ in REGULARISERS if a[f]]}: idir_fast trains one regulariser at a "
                             "time; switch on one of them")
        gpu = torch.cuda.is_available() if a["gpu"] is None else bool(a["gpu"])
        return dict(compat="idir-2022", epochs=int(a["epochs"]), lr=float(a["lr"]), batch_size=int(a["batch_size"]),
                    hidden=tuple(int(w) for w in layers[1:-1]), omega=float(a["omega"]), init="idir-2022",
                    regularizer=chosen[0][0] if chosen else None,
                    alpha=float(a[chosen[0][1]]) if chosen else None, seed=int(a["seed"]),
                    device="cuda" if gpu else "cpu")

    def fit(self, epochs: Optional[int] = None, red_blue: bool = False) -> None:
        """Train (``epochs`` overrides the constructor's; ``red_blue`` is unused, as in the released code)."""
        from ..api import register

        settings = dict(self.settings, **({"epochs": int(epochs)} if epochs else {}))
        mask = None if self.mask is None else sitk.Cast(_image(self.mask), sitk.sitkUInt8)
        self.registration = register(_image(self.fixed_image.numpy()), _image(self.moving_image.numpy()), mask,
                                     progress=bool(self.args["verbose"]), **settings)
        self.network = ReleasedFrameNetwork(self.registration.siren)
        if self.args["verbose"]:
            self.loss_list = np.asarray(self.registration.history["loss"])
            self.data_loss_list = np.asarray(self.registration.history["similarity"])

    # ------------------------------------------------------------------------------------------ sampling
    def _sample(self, volume: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        """Trilinear samples of ``volume`` (z, y, x) at normalised array-order coordinates (border-clamped)."""
        from ..core.sampling import trilinear

        shape = torch.tensor(volume.shape, dtype=torch.float64)
        index = ((coordinates.double() + 1.0) * (shape - 1) * 0.5).flip(-1)  # → (x, y, z) voxel indices
        return trilinear(volume.double(), index).float()

    def transform_no_add(self, transformation, moving_image=None, reshape: bool = False) -> torch.Tensor:
        """The moving image (or ``moving_image``) sampled at absolute normalised coordinates ``(N, 3)``."""
        volume = self.moving_image if moving_image is None else torch.as_tensor(moving_image, dtype=torch.float32)
        return self._sample(volume, torch.as_tensor(transformation).cpu())

    def transform(self, transformation, coordinate_tensor=None, moving_image=None, reshape: bool = False):
        """``transformation`` (a displacement at ``coordinate_tensor``; default: every voxel of the fixed grid)
        added to the coordinates, then the moving image sampled there."""
        coords = self._grid() if coordinate_tensor is None else torch.as_tensor(coordinate_tensor).cpu()
        return self.transform_no_add(coords + torch.as_tensor(transformation).cpu(), moving_image, reshape)

    def _grid(self, dimension: Optional[int] = None, slice_pos: int = 0) -> torch.Tensor:
        shape = list(self.fixed_image.shape)
        axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
        if dimension is not None:
            axes[dimension] = axes[dimension][slice_pos:slice_pos + 1]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def __call__(self, coordinate_tensor=None, output_shape=(28, 28), dimension: int = 0, slice_pos: int = 0):
        """The warped moving image at ``coordinate_tensor`` (default: the slice ``slice_pos`` across axis
        ``dimension`` of the fixed grid), reshaped to ``output_shape``, as a NumPy array."""
        if self.network is None:
            raise InputError("call fit() before evaluating the registration")
        coords = self._grid(dimension, slice_pos) if coordinate_tensor is None else torch.as_tensor(coordinate_tensor)
        moved = coords.cpu().float() + self.network(coords).cpu()
        return self.transform_no_add(moved).numpy().reshape(output_shape)


__all__ = ["ImplicitRegistrator", "ReleasedFrameNetwork", "KEYWORDS"]
