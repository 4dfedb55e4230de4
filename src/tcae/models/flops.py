"""FLOP counting with torch.utils.flop_counter (one multiply-add = 2 FLOPs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

from tcae.models.tcae import TCAE


@dataclass
class FlopsReport:
    """FLOPs for one image (multiply-add = 2 FLOPs; GMACs = GFLOPs / 2)."""

    encode: int
    decode: int

    @property
    def total(self) -> int:
        return self.encode + self.decode

    def as_dict(self) -> dict[str, float]:
        return {"encode_gflops": self.encode / 1e9, "decode_gflops": self.decode / 1e9,
                "total_gflops": self.total / 1e9, "total_gmacs": self.total / 2e9}


# torch's registry knows the CUDA attention kernels but not the CPU one, which would count as 0 FLOPs.
def _cpu_attention_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_attention_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


def _conv_backward_flops(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                         output_mask, out_shape=None, **kwargs) -> int:
    """convolution_backward = one forward-sized conv per requested gradient (input, weight).

    torch.utils.flop_counter's own formula counts the weight gradient of a grouped convolution
    `groups` times over (a depthwise conv's backward counts ~channels x its forward), which would
    inflate DC-AE's training-step FLOPs (its EfficientViT blocks use depthwise convs).
    """
    return (int(bool(output_mask[0])) + int(bool(output_mask[1]))) * conv_flop_count(x, w, grad_out, transposed)


_aten = torch.ops.aten
CUSTOM_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
    _aten.convolution_backward: _conv_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that also counts CPU attention and counts grouped-conv backward correctly."""
    return FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)


def count_flops(fn, *args) -> int:
    """FLOPs of fn(*args) as counted by torch.utils.flop_counter (no gradients)."""
    with torch.no_grad(), flop_counter() as counter:
        fn(*args)
    return int(counter.get_total_flops())


def flops(model: TCAE, image_size: int | tuple[int, int] | None = None) -> FlopsReport:
    """Encode and decode FLOPs of `model` for one image of `image_size` (default: config.image_size)."""
    size = image_size or model.config.image_size
    h, w = (size, size) if isinstance(size, int) else size
    p = next(model.parameters())
    x = torch.zeros(1, model.config.in_channels, h, w, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        z = model.encode(x)
    return FlopsReport(encode=count_flops(model.encode, x), decode=count_flops(model.decode, z))
