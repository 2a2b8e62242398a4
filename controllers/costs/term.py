"""What a cost term is, and the registry of term types.

A term is defined once, in torch: `value(x (..., n), u (..., m)) -> (...)` works in any floating
dtype, on any device, batched over any leading dimensions (none included). The same method gives
iLQR and GPS their float64 values and the sampling planners their float32 batches.
`derivatives(x (B, n), u (B, m))` gives l and its first and second derivatives for iLQR/GPS; the
default takes them through `value` by autograd (torch.func), and a term overrides it with analytic
ones where those are cheaper, computing l with the same code as `value`.

A term type registers itself where it is defined:

    @register("state", keys=("weights", "target", "angles"))
    class StateCost(Term): ...

with the YAML keys it takes besides the common ones (type, weight, final_weight, ramp) and a
`from_config(reader, scene)` that builds it (controllers.costs.reader).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterable, NamedTuple

import numpy as np
import torch
from torch.func import jacrev, vmap

if TYPE_CHECKING:
    from forethought.controllers.costs.reader import TermReader


class TensorParameters:
    """Gives a term's numpy parameters as tensors in the dtype and on the device of the tensors they
    meet, each made once (floating arrays take that dtype, integer arrays become long, bool stays
    bool). Parameters are read once: changing the numpy array afterwards is not seen."""

    def tensors(self, like: torch.Tensor, *names: str) -> tuple:
        cache = self.__dict__.setdefault("_tensors", {})
        key = (names, like.dtype, like.device)
        found = cache.get(key)
        if found is None:
            found = cache[key] = tuple(_as_tensor(getattr(self, name), like) for name in names)
        return found


    def take(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x[..., index] for the integer parameter `name` (k,): a view when the indices run
        consecutively (a state's joints usually do), else a gather."""
        return x[..., self._index(x, name)]

    def difference(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x - the floating parameter `name` (k,) along x's last axis (..., k). Over a batch of
        trajectories (..., T+1, k) the subtraction runs on the last two axes as one, against the
        parameter tiled T+1 times: torch's loop over a 4-wide broadcast axis is six times slower than
        over a 64-wide one (a fifth of a sampling planner's cost). The same numbers either way."""
        (p,) = self.tensors(x, name)
        if x.dim() < 3 or x.shape[-2] < 2:  # states (B, k), not trajectories: one tiling a batch size
            return x - p
        cache = self.__dict__["_tensors"]
        key = ("tiled", name, x.shape[-2], x.dtype, x.device)
        tiled = cache.get(key)
        if tiled is None:
            with torch.inference_mode(False):
                tiled = cache[key] = p.repeat(x.shape[-2])
        return (x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1]) - tiled).reshape(x.shape)

    def put(self, x: torch.Tensor, name: str, value: torch.Tensor) -> None:
        """x[..., index] = value in place, for the integer parameter `name` (k,) as `take` reads it."""
        x[..., self._index(x, name)] = value

    def _index(self, x: torch.Tensor, name: str):
        """The integer parameter `name` as an index of x's last axis: a slice when consecutive."""
        cache = self.__dict__.setdefault("_tensors", {})
        key = ("take", name, x.device)
        found = cache.get(key)
        if found is None:
            index = np.asarray(getattr(self, name))
            consecutive = len(index) > 0 and np.array_equal(index, np.arange(index[0], index[0] + len(index)))
            found = cache[key] = slice(int(index[0]), int(index[0]) + len(index)) if consecutive else _as_tensor(index, x)
        return found


def _as_tensor(value, like: torch.Tensor):
    """A parameter as an ordinary tensor (never an inference tensor, even when first met in
    inference mode, so that autograd can use it later)."""
    if value is None:
        return None
    a = np.asarray(value)
    with torch.inference_mode(False):
        if a.dtype.kind == "f":
            return torch.tensor(a, device=like.device).to(like.dtype)
        if a.dtype.kind in "iu":
            return torch.tensor(a.astype(np.int64), device=like.device)
        return torch.tensor(a, device=like.device)


class TermDerivatives(NamedTuple):
    """l (B,), l_x (B, n), l_u (B, m), l_xx (B, n, n), l_uu (B, m, m), l_ux (B, m, n), torch; the
    action blocks may be None (zero) for a term that does not read the action."""

    l: torch.Tensor
    l_x: torch.Tensor
    l_u: torch.Tensor | None
    l_xx: torch.Tensor
    l_uu: torch.Tensor | None
    l_ux: torch.Tensor | None

    @classmethod
    def zeros(cls, x: torch.Tensor, u: torch.Tensor, l: torch.Tensor, action: bool = False) -> "TermDerivatives":
        """Zero derivatives for rows x (B, n), u (B, m), around the values l (B,), to fill in place;
        the action blocks only with `action`."""
        (B, n), m = x.shape, u.shape[-1]
        z = dict(dtype=x.dtype, device=x.device)
        if not action:
            return cls(l, torch.zeros(B, n, **z), None, torch.zeros(B, n, n, **z), None, None)
        return cls(l, torch.zeros(B, n, **z), torch.zeros(B, m, **z), torch.zeros(B, n, n, **z),
                   torch.zeros(B, m, m, **z), torch.zeros(B, m, n, **z))


class Term(TensorParameters):
    """One cost term (see the module docstring). A term that reads the action declares
    `uses_action`: it is a running cost only (no terminal weight); any other term has zero action
    derivatives. `name` and `keys` are set by `register`."""

    name: ClassVar[str] = ""
    keys: ClassVar[frozenset[str]] = frozenset()
    uses_action: ClassVar[bool] = False

    def value(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x (..., n), u (..., m) -> (...), in x's dtype and on its device."""
        raise NotImplementedError

    def derivatives(self, x: torch.Tensor, u: torch.Tensor) -> TermDerivatives:
        """Value and derivatives at rows x (B, n), u (B, m); by autograd unless the term overrides it."""
        return autograd_derivatives(self, x, u)

    @classmethod
    def from_config(cls, r: "TermReader", scene) -> "Term":
        """The term that a YAML mapping (read through r) declares; scene: the robot's MuJoCo scene or None."""
        raise NotImplementedError

    @classmethod
    def label(cls, i: int, raw: dict) -> str:
        """A short name for term i of the YAML list, as plots show it."""
        return f"{i} {cls.name}"


def autograd_derivatives(term: Term, x: torch.Tensor, u: torch.Tensor) -> TermDerivatives:
    """A term's exact derivatives through its `value` by torch.func, row by row under vmap (reverse
    mode twice for the Hessian: forward mode would pull in torch's deprecated TorchScript decompositions)."""
    with torch.inference_mode(False):  # the Cost calls terms in inference mode; autograd needs it off
        x, u = x.clone(), u.clone()
        gradient = vmap(jacrev(term.value, argnums=(0, 1)))(x, u)
        (l_xx, _), (l_ux, l_uu) = vmap(jacrev(jacrev(term.value, argnums=(0, 1)), argnums=(0, 1)))(x, u)
        return TermDerivatives(term.value(x, u), gradient[0], gradient[1], l_xx, l_uu, l_ux)


TERM_TYPES: dict[str, type[Term]] = {}


def register(name: str, keys: Iterable[str] = ()):
    """Class decorator: the term type `name` in YAML, taking `keys` besides the common ones."""

    def add(cls: type[Term]) -> type[Term]:
        if name in TERM_TYPES:
            raise ValueError(f"cost term type {name!r} is registered twice")
        cls.name, cls.keys = name, frozenset(keys)
        TERM_TYPES[name] = cls
        return cls

    return add
