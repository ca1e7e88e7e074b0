"""The few torchvision pieces pytorch-fid's code builds on, so its own code can run here without torchvision.

pytorch-fid 0.3.0 (`pytorch_fid.inception`, `pytorch_fid.fid_score`) imports torchvision at module
level: its FID blocks subclass torchvision's InceptionA/C/E, `fid_inception_v3` starts from
`torchvision.models.inception_v3`, and `get_activations` converts images with `transforms.ToTensor`.
This project does not install torchvision (a compiled package pinned to one torch build), so the test
that checks histoldm against pytorch-fid puts these stand-ins under the torchvision names while it
imports pytorch-fid. They hold only torchvision's generic structure (attribute names, channel counts,
strides, BatchNorm eps 0.001, the forward passes of the blocks pytorch-fid does not patch), written
from torchvision 0.x's models/inception.py (BSD-3-Clause). Everything FID-specific (the patched
blocks, which blocks are used, the resize and scaling, the statistics and the Frechet distance) is
pytorch-fid's own code. The stand-ins cannot make the check pass by themselves: the features are
compared with an independent implementation, the TorchScript network, whose tensors they carry.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)


class Inception3(nn.Module):
    """The stem and blocks in torchvision's order (their state-dict order is the TF graph's)."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, weights=None, init_weights: bool = False):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.fc = nn.Linear(2048, num_classes)


class ToTensor:
    """PIL RGB image -> float (3, H, W) in [0, 1], as torchvision's ToTensor."""

    def __call__(self, img) -> torch.Tensor:
        return torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def torchvision_modules() -> dict[str, types.ModuleType]:
    """sys.modules entries under which pytorch-fid finds the pieces above."""
    root, models, inception, transforms = (
        types.ModuleType(n)
        for n in ("torchvision", "torchvision.models", "torchvision.models.inception", "torchvision.transforms")
    )
    root.__version__ = "0.19.0"  # pytorch-fid reads it to pick the inception_v3 keyword arguments
    for name in ("BasicConv2d", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "Inception3"):
        setattr(inception, name, globals()[name])
    models.inception = inception
    models.inception_v3 = Inception3
    transforms.ToTensor = ToTensor
    root.models, root.transforms = models, transforms
    return {m.__name__: m for m in (root, models, inception, transforms)}


def import_pytorch_fid(monkeypatch) -> tuple[types.ModuleType, types.ModuleType]:
    """pytorch_fid.inception and pytorch_fid.fid_score, imported over the stand-ins (real torchvision if installed)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        for name, module in torchvision_modules().items():
            monkeypatch.setitem(sys.modules, name, module)
    for name in ("pytorch_fid.fid_score", "pytorch_fid.inception"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    inception = importlib.import_module("pytorch_fid.inception")
    fid_score = importlib.import_module("pytorch_fid.fid_score")
    for name in ("pytorch_fid.fid_score", "pytorch_fid.inception"):  # not left behind over the stand-ins
        monkeypatch.delitem(sys.modules, name)
    return inception, fid_score


def bundled_state_dict(
    torchscript: torch.jit.ScriptModule, template: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The TorchScript network's tensors in pytorch-fid's layout (`template`: its state dict).

    Both list their convolutions in the TF graph's order, so the i-th TorchScript layer (weight, beta,
    mean, var) fills the i-th BasicConv2d (conv.weight, bn.bias, bn.running_mean, bn.running_var);
    the TF graph has no BatchNorm scale, so bn.weight is 1. Every shape is checked on the way.
    """
    ours = torchscript.state_dict()
    layers = [k[: -len(".weight")] for k in ours if k.endswith(".weight")]
    targets = [k[: -len(".conv.weight")] for k in template if k.endswith(".conv.weight")]
    assert len(layers) == len(targets), (len(layers), len(targets))
    mapped = dict(template)
    for src, dst in zip(layers, targets):
        pairs = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
        for a, b in pairs.items():
            assert ours[f"{src}.{a}"].shape == template[f"{dst}.{b}"].shape, (src, dst, a)
            mapped[f"{dst}.{b}"] = ours[f"{src}.{a}"].detach().clone()
        mapped[f"{dst}.bn.weight"] = torch.ones_like(template[f"{dst}.bn.weight"])
    return mapped
