"""One pure SGD step with momentum, Nesterov and weight decay, on plain tensors.

It computes what ``torch.optim.SGD`` (dampening 0) does, but returns new tensors instead of updating
in place, so the step can sit inside an autograd graph: with gradients from
``torch.autograd.grad(..., create_graph=True)``, the new parameters (and the new momentum buffers)
stay differentiable with respect to whatever produced the gradients (a learned loss's weights,
for instance). The learning rate is given per call, so any schedule can drive it.
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
) -> tuple[Tensors, Tensors | None]:
    """``(new_params, new_velocity)`` after one step, as ``torch.optim.SGD`` with dampening 0 computes it.

    ``grads`` is a dict with the keys of ``params`` or a sequence in their order (what
    ``torch.autograd.grad(loss, list(params.values()))`` returns). ``velocity`` holds the momentum
    buffers; ``None`` before the first step, where ``torch.optim.SGD`` sets the buffer to the gradient
    itself. The new velocity is ``None`` when ``momentum == 0``. Nothing is modified in place.
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
            grad = grad + weight_decay * param
        if momentum != 0:
            buffer = grad if velocity is None else momentum * velocity[name] + grad
            new_velocity[name] = buffer
            grad = grad + momentum * buffer if nesterov else buffer
        new_params[name] = param - lr * grad
    return new_params, (new_velocity if momentum != 0 else None)
