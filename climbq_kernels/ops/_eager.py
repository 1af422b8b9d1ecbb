"""Plain eager calls of the package's custom ops, without torch.library's dispatch layers.

A `torch.library` custom op is what torch.compile, fake tensors, tensor subclasses and
`opcheck` need. Each eager call through it also goes through the dispatcher (Autograd, then
backend key), fills in schema defaults and runs a generated torch.autograd.Function: tens of
microseconds a call, as much as a small tensor's kernels take. `eager(op)` runs the op's own
function, setup_context and backward through one torch.autograd.Function instead (what the
custom op runs underneath), and the op itself wherever torch.compile traces or a tensor
subclass comes in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

_FUNCTIONS: dict[object, Callable] = {}
_PLAIN_TENSORS = (Tensor, nn.Parameter)


def custom_op(name: str) -> Callable:
    """`torch.library.custom_op(name, mutates_args=())`, keeping the decorated function for `eager`."""
    def wrap(function: Callable):
        op = torch.library.custom_op(name, function, mutates_args=())
        _FUNCTIONS[op] = function
        return op
    return wrap


def _eager_route(args) -> str:
    """Where an eager call goes: to the custom op ("op") under torch.compile tracing or with a
    tensor subclass, else "grad" when a tensor argument requires grad, else "plain". One pass
    over the arguments: at batch 1 a serving call's host time is what this adds to the kernel's."""
    if torch.compiler.is_compiling():
        return "op"
    route = "plain"
    for a in args:
        if isinstance(a, Tensor):
            if type(a) not in _PLAIN_TENSORS:
                return "op"
            if a.requires_grad:
                route = "grad"
    return route


def eager(op, setup_context: Callable | None = None, backward: Callable | None = None) -> Callable:
    """`op`'s eager twin, taking the op's arguments positionally; registers `backward` (with
    `setup_context`) as the op's autograd formula too, so both paths differentiate alike."""
    function = _FUNCTIONS[op]
    autograd_function = None
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)

        def forward(ctx, *args):
            output = function(*args)
            setup_context(ctx, args, output)
            return output

        autograd_function = type(f"{function.__name__}_eager", (torch.autograd.Function,),
                                 {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def call(*args):
        route = _eager_route(args)
        if route == "op":
            return op(*args)
        if route == "grad" and autograd_function is not None and torch.is_grad_enabled():
            return autograd_function.apply(*args)
        return function(*args)

    call.__name__ = call.__qualname__ = f"{function.__name__}_eager"
    call.__doc__ = f"Eager twin of the custom op {op}: same arguments, outputs and gradients."
    return call
