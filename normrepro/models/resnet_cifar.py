"""CIFAR ResNets.

- He et al. 2016 (resnet20/32/44/56/110): 3 stages of basic blocks, widths w, 2w, 4w (w=16);
  the projection shortcut (1x1 conv + norm, "option B") where the shape changes. resnet14 (2 blocks per stage,
  175,258 parameters for 10 classes) is the authors' CIFAR "ResNet-18": their ``ResNet_cifar10(depth=18)``
  (norm_matters ``models/resnet.py``) builds n = (18 - 2) // 6 = 2 blocks per stage with the same 1x1 conv + norm
  shortcut where the stride or width changes.
- The CIFAR variant of ResNet-18/34/50: torchvision's block plan with a 3x3 stride-1 stem and no max-pool.
Every norm is ``norm_layer(channels)``.
"""
from __future__ import annotations

from torch import nn


def conv3x3(cin, cout, stride=1, bias=False):
    """A 3x3 convolution with padding 1."""
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


def shortcut(cin, cout, stride, norm_layer):
    """The identity, or a 1x1 conv + norm projection where the shape changes (option B)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(cout))


class BasicBlock(nn.Module):
    """relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, cin, planes, stride, norm_layer):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), norm_layer(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(cin, planes, stride, norm_layer)

    def forward(self, x):
        """The block's output for ``x`` (N, C, H, W)."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each followed by a norm, + shortcut(x)."""

    expansion = 4

    def __init__(self, cin, planes, stride, norm_layer):
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), norm_layer(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), norm_layer(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(cin, cout, stride, norm_layer)

    def forward(self, x):
        """The block's output for ``x`` (N, C, H, W)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3 -> stages of blocks -> global average pool -> ``fc``."""

    def __init__(self, block, layers, widths, num_classes, norm_layer, in_channels=3):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(in_channels, widths[0]), norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (i > 0 and j == 0) else 1, norm_layer))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        """Logits for images ``x`` (N, C, H, W)."""
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def he_resnet(depth: int, num_classes, norm_layer, in_channels=3, width=16):
    """resnet{6n+2}: 3 stages of n basic blocks, widths (w, 2w, 4w)."""
    n = (depth - 2) // 6
    return CifarResNet(BasicBlock, [n] * 3, [width, 2 * width, 4 * width], num_classes, norm_layer, in_channels)


_PLANS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}


def resnet_cifar(depth: int, num_classes, norm_layer, in_channels=3, width=64):
    """ResNet-18/34/50 with a 3x3 stride-1 stem and no max-pool; widths (w, 2w, 4w, 8w)."""
    block, layers = _PLANS[depth]
    return CifarResNet(block, layers, [width * 2 ** i for i in range(4)], num_classes, norm_layer, in_channels)
