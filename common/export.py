"""A one-tensor front end for the bundles' multi-input networks, so MONAI's ``verify_net_in_out`` and ``ckpt_export``
(which feed a network ONE random tensor shaped by ``metadata.json``) work on denoisers that take ``(x_t, t, ...)``.

MONAI's ``DiffusionModelUNet`` cannot be scripted (its attention reshapes with a starred shape), so TorchScript export
traces, and ``ckpt_export --use_trace True`` traces with one input. :class:`PackedInputs` takes that input and unpacks
every argument of the wrapped ``forward`` from its channels, in ``layout`` order:

* ``(name, n)``: ``n`` image channels passed as they are (the noisy sample, a mask condition, an edge map);
* ``(name, "scalar")``: one channel whose pixel [0, 0] is a per-sample integer (the timestep, a task flag);
* ``(name, "sequence", L)``: one channel whose first ``L`` pixels, row-major, are per-sample integers (text tokens).

Its state dict is the wrapped network's (no prefix), so a bundle's ``models/model.pt`` loads into it unchanged and the
exported TorchScript file holds the trained weights. The layouts are documented in each bundle's ``metadata.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["PackedInputs", "pack_inputs"]

_PREFIX = "wrapped."  # the child's attribute name; hidden from state dicts


def _channels(entry: Sequence[Any]) -> int:
    return entry[1] if isinstance(entry[1], int) else 1


class PackedInputs(nn.Module):
    """``forward(packed) = network(*unpacked)``; see the module docstring for ``layout``. ``output``: which element of
    a tuple output to return (e.g. 0 for a segmenter's mask logits), None to return the output as is."""

    def __init__(self, network: nn.Module, layout: Sequence[Sequence[Any]], output: int | None = None) -> None:
        super().__init__()
        for entry in layout:
            kind = entry[1]
            if not (isinstance(kind, int) and kind > 0) and kind not in ("scalar", "sequence"):
                raise ValueError(
                    f"layout entry {entry!r}: expected (name, channels), (name, 'scalar') or "
                    "(name, 'sequence', length)."
                )
        self.wrapped = network
        self.layout = [tuple(e) for e in layout]
        self.output = output
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    @property
    def network(self) -> nn.Module:
        return self.wrapped

    @property
    def in_channels(self) -> int:
        return sum(_channels(e) for e in self.layout)

    def forward(self, packed: torch.Tensor) -> Any:
        if packed.shape[1] != self.in_channels:
            names = ", ".join(str(e[0]) for e in self.layout)
            raise ValueError(f"packed input has {packed.shape[1]} channels, expected {self.in_channels} ({names}).")
        args, start = [], 0
        for entry in self.layout:
            width = _channels(entry)
            block = packed[:, start : start + width]
            start += width
            if entry[1] == "scalar":
                args.append(block[:, 0, 0, 0].round().long())
            elif entry[1] == "sequence":
                args.append(block[:, 0].flatten(1)[:, : entry[2]].round().long())
            else:
                args.append(block)
        out = self.wrapped(*args)
        return out if self.output is None else out[self.output]


def pack_inputs(layout: Sequence[Sequence[Any]], *args: torch.Tensor) -> torch.Tensor:
    """The inverse of :class:`PackedInputs`' unpacking: what a user of an exported model feeds it."""
    spatial = next(a.shape[2:] for a, e in zip(args, layout) if isinstance(e[1], int))
    planes = []
    for arg, entry in zip(args, layout):
        if entry[1] == "scalar":
            planes.append(arg.float().view(-1, 1, *([1] * len(spatial))).expand(-1, 1, *spatial))
        elif entry[1] == "sequence":
            flat = torch.zeros(arg.shape[0], int(torch.tensor(spatial).prod()), device=arg.device)
            flat[:, : arg.shape[1]] = arg.float()
            planes.append(flat.view(-1, 1, *spatial))
        else:
            planes.append(arg.float())
    return torch.cat(planes, dim=1)


def _strip_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + _PREFIX)]:
        state_dict[prefix + key[len(prefix + _PREFIX) :]] = state_dict.pop(key)


def _add_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + _PREFIX)]:
        state_dict[prefix + _PREFIX + key[len(prefix) :]] = state_dict.pop(key)
