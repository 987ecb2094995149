"""One SGD step with momentum, Nesterov and weight decay: the only SGD update of the package.

It computes what ``torch.optim.SGD`` (dampening 0) computes, with the same kernels in the same order
(``grad.add(param, alpha=wd)``, ``buf * momentum + grad``, ``param.add(grad, alpha=-lr)``), so a
trainer built on it follows ``torch.optim.SGD`` bit for bit on the CPU.

By default it returns new tensors and modifies nothing, so the step can sit inside an autograd graph:
with gradients from ``torch.autograd.grad(..., create_graph=True)``, the new parameters (and the new
momentum buffers) stay differentiable with respect to whatever produced the gradients (a learned
loss's weights, for instance). ``inplace=True`` writes the result into the given parameter and
momentum tensors instead: the trainers' hot path, where nothing is differentiated through the step
and fresh tensors would only cost allocations. The learning rate is given per call, so any schedule
can drive it; a tensor of shape ``[N]`` gives each of N stacked children (the leading dimension of
every parameter) its own rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

Tensors = dict[str, torch.Tensor]


def sgd_step(
    params: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    velocity: Mapping[str, torch.Tensor] | None,
    *,
    lr: float | torch.Tensor,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    inplace: bool = False,
) -> tuple[Tensors, Tensors | None]:
    """``(new_params, new_velocity)`` after one step, as ``torch.optim.SGD`` with dampening 0 computes it.

    ``grads`` is a dict with the keys of ``params`` or a sequence in their order (what
    ``torch.autograd.grad(loss, list(params.values()))`` returns). ``velocity`` holds the momentum
    buffers; ``None`` before the first step, where ``torch.optim.SGD`` sets the buffer to the gradient
    itself. The new velocity is ``None`` when ``momentum == 0``. Without ``inplace`` nothing is
    modified; with it, ``params`` and ``velocity`` are updated in place (call it under
    ``torch.no_grad()``) and the returned dicts hold those same tensors (the first step's velocity is new).
    """
    if nesterov and momentum <= 0:
        raise ValueError("Nesterov momentum needs momentum > 0")
    if not isinstance(grads, Mapping):
        if len(grads) != len(params):
            raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
        grads = dict(zip(params, grads))
    new_params: Tensors = {}
    new_velocity: Tensors = {}
    for name, param in params.items():
        grad = grads[name]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            if velocity is None:
                buffer = grad
            elif inplace:
                buffer = velocity[name].mul_(momentum).add_(grad)
            else:
                buffer = velocity[name].mul(momentum).add(grad)
            new_velocity[name] = buffer
            grad = grad.add(buffer, alpha=momentum) if nesterov else buffer
        new_params[name] = _descend(param, grad, lr, inplace)
    return new_params, (new_velocity if momentum != 0 else None)


def _descend(param: torch.Tensor, direction: torch.Tensor, lr: float | torch.Tensor, inplace: bool) -> torch.Tensor:
    """``param - lr * direction``; a per-child ``lr`` of shape ``[N]`` scales the leading dimension."""
    if isinstance(lr, torch.Tensor):
        rate = lr.view(lr.shape + (1,) * (param.dim() - lr.dim()))
        return param.addcmul_(direction, rate, value=-1) if inplace else param.addcmul(direction, rate, value=-1)
    return param.add_(direction, alpha=-lr) if inplace else param.add(direction, alpha=-lr)
