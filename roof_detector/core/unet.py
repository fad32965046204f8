"""U-Net architectures shared by training and export.

Two networks live here:

* ``PlainUNet``: the seed study's U-Net (22 conv layers, 18 batch-norm layers,
  about 3.8 M parameters with ``base_channels=16``), trained from scratch.
* ``EffLiteUNet``: a U-Net whose encoder is EfficientNet-Lite0 (ReLU6, no
  squeeze-excitation, so it exports cleanly and runs fast on CPU). Its encoder
  state-dict keys match ``efficientnet-lite0-57934424.pth`` so ImageNet weights
  load directly (see :func:`load_efficientnet_lite0_weights`).

Both map ``N x 3 x H x W`` normalised images to ``N x C x H x W`` logits, for
any H, W divisible by 32 (16 for the plain U-Net). ``C`` (``out_channels``)
is 1 for a building-only model; separation models add channels for the
building border and the contact zone between touching buildings (their order
is :data:`SEPARATION_OUTPUTS`; see :mod:`.training.targets`).

``ExportWrapper`` adds the input normalisation and the sigmoid, so the
TorchScript file takes RGB in [0, 1] and returns probabilities, one channel
per output.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn
import torch.nn.functional as F

ARCHITECTURES = ("plain_unet", "efflite0_unet")
#: Output channels of a model, in order: building-only models have the first one only.
SEPARATION_OUTPUTS = ("building", "border", "contact")


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class PlainUNet(nn.Module):
    """The seed study's U-Net: 4 down and 4 up stages of two 3x3 convs each.

    9 double-conv blocks give 18 conv + 18 batch-norm layers; with the four
    transposed convs of the decoder and the 1x1 head that makes 23 conv-type
    layers, 22 of them counted as "conv layers" in the study (3x3 and 1x1).
    """

    def __init__(self, base_channels: int = 16, in_channels: int = 3, out_channels: int = 1):
        super().__init__()
        c = [base_channels * 2**i for i in range(5)]
        self.downs = nn.ModuleList()
        prev = in_channels
        for ch in c:
            self.downs.append(nn.Sequential(_conv_bn_relu(prev, ch), _conv_bn_relu(ch, ch)))
            prev = ch
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for ch in reversed(c[:-1]):
            self.ups.append(nn.ConvTranspose2d(prev, ch, 2, stride=2))
            self.up_convs.append(nn.Sequential(_conv_bn_relu(2 * ch, ch), _conv_bn_relu(ch, ch)))
            prev = ch
        self.head = nn.Conv2d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        for i, down in enumerate(self.downs):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = down(x)
            skips.append(x)
        skips.pop()
        for up, conv in zip(self.ups, self.up_convs):
            x = up(x)
            x = conv(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


# EfficientNet-Lite0 block settings: (kernel, stride, expand, out_ch) per block,
# in the order of the reference checkpoint's ``_blocks.N`` keys.
_LITE0_BLOCKS = [
    (3, 1, 1, 16),
    (3, 2, 6, 24),
    (3, 1, 6, 24),
    (5, 2, 6, 40),
    (5, 1, 6, 40),
    (3, 2, 6, 80),
    (3, 1, 6, 80),
    (3, 1, 6, 80),
    (5, 1, 6, 112),
    (5, 1, 6, 112),
    (5, 1, 6, 112),
    (5, 2, 6, 192),
    (5, 1, 6, 192),
    (5, 1, 6, 192),
    (5, 1, 6, 192),
    (3, 1, 6, 320),
]
# Index of the last block at each output stride 2, 4, 8, 16, 32: the skips.
_LITE0_SKIP_BLOCKS = (0, 2, 4, 10, 15)
_BN_EPS = 1e-3  # as in the TensorFlow original the checkpoint came from
_BN_MOMENTUM = 0.01


class _MBConv(nn.Module):
    """Inverted residual block, named to match the reference checkpoint."""

    def __init__(self, in_ch: int, kernel: int, stride: int, expand: int, out_ch: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        else:
            self._expand_conv = nn.Identity()
            self._bn0 = nn.Identity()
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            y = y + x
        return y


class EffLite0Encoder(nn.Module):
    """EfficientNet-Lite0 feature extractor returning the five skip maps."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks = []
        prev = 32
        for kernel, stride, expand, out_ch in _LITE0_BLOCKS:
            blocks.append(_MBConv(prev, kernel, stride, expand, out_ch))
            prev = out_ch
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = [_LITE0_BLOCKS[i][3] for i in _LITE0_SKIP_BLOCKS]
        self.skip_ids: List[int] = list(_LITE0_SKIP_BLOCKS)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats: List[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.skip_ids:
                feats.append(x)
        return feats


class _DecoderBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch + skip_ch, out_ch)
        self.conv2 = _conv_bn_relu(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class _UpBlock(nn.Module):
    """Final decoder stage: stride 2 to full resolution, no skip there."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EffLiteUNet(nn.Module):
    """U-Net decoder over an EfficientNet-Lite0 encoder."""

    def __init__(
        self, decoder_channels: Sequence[int] = (96, 64, 40, 24, 16), in_channels: int = 3, out_channels: int = 1
    ):
        super().__init__()
        self.encoder = EffLite0Encoder(in_channels)
        enc = self.encoder.out_channels  # strides 2, 4, 8, 16, 32
        skips = list(reversed(enc[:-1]))
        blocks = []
        prev = enc[-1]
        for skip_ch, out_ch in zip(skips, decoder_channels[:-1]):
            blocks.append(_DecoderBlock(prev, skip_ch, out_ch))
            prev = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.final = _UpBlock(prev, decoder_channels[-1])
        self.head = nn.Conv2d(decoder_channels[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = feats[4]
        skips = [feats[3], feats[2], feats[1], feats[0]]
        for i, block in enumerate(self.decoder):
            y = block(y, skips[i])
        return self.head(self.final(y))


def load_efficientnet_lite0_weights(model: EffLiteUNet, path: str) -> Dict[str, int]:
    """Load ImageNet weights from ``efficientnet-lite0-57934424.pth`` into the encoder.

    Returns counts of loaded and skipped tensors; raises ``ValueError`` if
    nothing matched (a file of another layout).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.encoder.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(loaded) < len(own) * 0.9:
        raise ValueError(
            f"{path} does not look like EfficientNet-Lite0 weights "
            f"({len(loaded)} of {len(own)} encoder tensors matched)"
        )
    model.encoder.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "skipped": len(state) - len(loaded)}


def load_widening_head(net: nn.Module, state: Dict[str, torch.Tensor]) -> int:
    """Load ``state`` into ``net`` whose head may have more output channels than ``state``'s.

    The first channels of the head take the saved weights; the extra ones keep
    their fresh initialisation (new border/contact outputs on a building-only
    model). Returns the number of head channels added.
    """
    own = net.state_dict()
    state = dict(state)
    added = 0
    for key in ("head.weight", "head.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            old, new = state[key], own[key].clone()
            if old.shape[1:] != new.shape[1:] or old.shape[0] > new.shape[0]:
                raise ValueError(f"{key}: saved shape {tuple(old.shape)} cannot widen to {tuple(new.shape)}")
            new[: old.shape[0]] = old
            added = new.shape[0] - old.shape[0]
            state[key] = new
    net.load_state_dict(state)
    return added


def build_model(architecture: str, **params) -> nn.Module:
    """Instantiate a network by its metadata name."""
    if architecture == "plain_unet":
        return PlainUNet(**params)
    if architecture == "efflite0_unet":
        return EffLiteUNet(**params)
    raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")


class ExportWrapper(nn.Module):
    """Normalise RGB in [0, 1], run the net, return probabilities in [0, 1] (N x C x H x W)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return torch.sigmoid(self.net(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gflops_per_tile(model: nn.Module, tile_size_px: int = 256) -> float:
    """Multiply-adds x 2 of one forward pass on a tile, counted by hooks on convs."""
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total[0] += 2 * k * out.numel()
        elif isinstance(mod, nn.ConvTranspose2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels
            total[0] += 2 * k * inp[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, tile_size_px, tile_size_px))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total[0] / 1e9
