"""HEPE's anomaly feature selection (AFS, §3.2 "Attention Prompt"): ODConv then depthwise separable convolution.

The paper names the two blocks and cites their papers but gives no sizes; every number here is our
choice (docs/methods/hepe.md lists them):
- `ODConv2d`: omni-dimensional dynamic convolution (Li et al., ICLR 2022, Eq. 2 of that paper): n kernels
  mixed per sample by a kernel attention (softmax), each scaled by a spatial (k x k), an input-channel and
  an output-filter attention (sigmoids), all four read off the globally pooled input through one squeeze
  layer (reduction r, at least `MIN_HIDDEN` units). ODConv's paper uses n=4, r=1/16; so do we. Its
  BatchNorm in the squeeze layer is left out: HEPE trains at batch 1 (AdaCLIP's trainer), where BatchNorm
  over one pooled vector is undefined.
- `DepthwiseSeparableConv2d`: Chollet (CVPR 2017): a k x k convolution per channel, then a 1 x 1 one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KERNELS = 4  # ODConv paper §4: n = 4 candidate kernels (its "ODConv (4x)")
REDUCTION = 1 / 16  # ODConv paper §3.2: reduction ratio r = 1/16
MIN_HIDDEN = 16  # ODConv's official code: the squeeze layer keeps at least 16 units
KERNEL_SIZE = 3  # our choice: 3 x 3 for both blocks (the paper gives none)


class ODConv2d(torch.nn.Module):
    """y = sum_i (a_w[i] * a_s * a_c * a_f * W_i) * x, the four attentions computed from x itself, per sample."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int = KERNEL_SIZE, kernels: int = KERNELS,
                 reduction: float = REDUCTION) -> None:
        super().__init__()
        self.channels_in, self.channels_out, self.kernel_size, self.kernels = channels_in, channels_out, kernel_size, kernels
        hidden = max(int(channels_in * reduction), MIN_HIDDEN)
        self.squeeze = torch.nn.Linear(channels_in, hidden)
        self.channel = torch.nn.Linear(hidden, channels_in)  # a_c: one weight per input channel
        self.filter = torch.nn.Linear(hidden, channels_out)  # a_f: one weight per output filter
        self.spatial = torch.nn.Linear(hidden, kernel_size * kernel_size)  # a_s: one weight per kernel position
        self.kernel = torch.nn.Linear(hidden, kernels)  # a_w: a softmax over the n kernels
        self.weight = torch.nn.Parameter(torch.empty(kernels, channels_out, channels_in, kernel_size, kernel_size))
        for candidate in self.weight:  # each candidate initialised as a plain convolution's weight would be
            torch.nn.init.kaiming_uniform_(candidate, a=math.sqrt(5))

    def attentions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, Cin), (B, Cout), (B, k*k), (B, n): channel, filter, spatial and kernel attention of each sample."""
        hidden = F.relu(self.squeeze(x.mean(dim=(2, 3))))
        return (torch.sigmoid(self.channel(hidden)), torch.sigmoid(self.filter(hidden)), torch.sigmoid(self.spatial(hidden)),
                self.kernel(hidden).softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        channel, filters, spatial, kernel = self.attentions(x)
        k = self.kernel_size
        # one mixed kernel per sample: sum over candidates of a_w * W_i, scaled by a_s; a_c and a_f act on input/output
        mixed = torch.einsum("bn,noikl->boikl", kernel, self.weight) * spatial.view(batch, 1, 1, k, k)
        grouped = F.conv2d((x * channel[:, :, None, None]).reshape(1, batch * self.channels_in, height, width),
                           mixed.reshape(batch * self.channels_out, self.channels_in, k, k), padding=k // 2, groups=batch)
        return grouped.view(batch, self.channels_out, *grouped.shape[-2:]) * filters[:, :, None, None]


class DepthwiseSeparableConv2d(torch.nn.Module):
    """A k x k depthwise convolution (one filter per channel) followed by a 1 x 1 pointwise one (Chollet 2017)."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int = KERNEL_SIZE) -> None:
        super().__init__()
        self.depthwise = torch.nn.Conv2d(channels_in, channels_in, kernel_size, padding=kernel_size // 2, groups=channels_in)
        self.pointwise = torch.nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class AnomalyFeatureSelection(torch.nn.Module):
    """VFM patch features (B, D, g, g) -> attention embedding (B, E, g, g): ODConv (D -> D) then DSConv (D -> E)."""

    def __init__(self, vfm_width: int, embed_dim: int) -> None:
        super().__init__()
        self.odconv = ODConv2d(vfm_width, vfm_width)
        self.dsconv = DepthwiseSeparableConv2d(vfm_width, embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dsconv(self.odconv(features))


class LinearSelection(torch.nn.Module):
    """The "VFM without AFS" row of HEPE's Table 2: the VFM features projected to the joint space by a 1 x 1 convolution."""

    def __init__(self, vfm_width: int, embed_dim: int) -> None:
        super().__init__()
        self.projection = torch.nn.Conv2d(vfm_width, embed_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)
