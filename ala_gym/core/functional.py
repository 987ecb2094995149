"""A child model as plain tensors: parameter and buffer dicts, run through ``torch.func.functional_call``.

Loss learners that differentiate through the child's own training (AdaLFL, ML3) need the child's
weights as ordinary tensors they can replace with the result of a differentiable update, not as
``nn.Parameter`` s an optimiser changes in place. :class:`FunctionalChild` holds the module only for
its structure; the weights live in :attr:`FunctionalChild.params`.

BatchNorm. A forward in training mode normalises with the batch's own statistics. Whether it also
updates the running statistics (the ones evaluation uses) is chosen per call: ``update_stats=True``
writes them into :attr:`FunctionalChild.buffers` (what an ordinary training step does);
``update_stats=False`` runs on a copy of the buffers, so a forward made only to measure something
(a meta-objective on a validation batch) normalises with that batch's statistics but leaves the
running statistics as the training batches made them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ala_gym.core.sgd import Tensors


class FunctionalChild:
    """``module``'s weights as dicts; the module itself is only a template for ``functional_call``.

    The dicts start as views of the module's own tensors (detached, so they are leaves of no graph).
    After :meth:`set_params` they hold new tensors; :meth:`write_back` copies them into the module,
    for code that uses the module directly (evaluation).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.params: Tensors = {name: p.detach() for name, p in module.named_parameters()}
        self.trainable = frozenset(name for name, p in module.named_parameters() if p.requires_grad)
        """The names of the parameters training changes: a frozen one (``requires_grad`` False: a fixed feature
        extractor of one's own model) keeps its values, as under :class:`ala_gym.core.trainer.ChildTrainer`."""
        self.buffers: Tensors = dict(module.named_buffers())

    def __call__(self, inputs: torch.Tensor, params: Tensors | None = None, update_stats: bool = True) -> torch.Tensor:
        """Outputs of the module (in its current train/eval mode) under ``params`` (default: :attr:`params`).

        ``update_stats=False`` leaves the BatchNorm running statistics untouched (see the module docstring).
        """
        buffers = self.buffers if update_stats else {name: b.clone() for name, b in self.buffers.items()}
        return functional_call(self.module, (self.params if params is None else params, buffers), (inputs,))

    def set_params(self, params: Tensors) -> None:
        """Adopt ``params`` (detached: the child's history is not kept in any graph)."""
        self.params = {name: p.detach() for name, p in params.items()}

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy :attr:`params` into the module's parameters."""
        for name, param in self.module.named_parameters():
            param.copy_(self.params[name])
