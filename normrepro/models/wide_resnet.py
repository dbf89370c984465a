"""WideResNet (Zagoruyko & Komodakis 2016): pre-activation basic blocks, depth = 6n + 4, widths 16k, 32k, 64k."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from normrepro.errors import ConfigError


class WideBlock(nn.Module):
    """Pre-activation basic block: conv3x3(relu(norm(conv3x3(relu(norm(x)))))) + shortcut, dropout between."""

    def __init__(self, cin, cout, stride, norm_layer, dropout):
        super().__init__()
        self.bn1, self.conv1 = norm_layer(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = norm_layer(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        """The block's output for ``x`` (N, C, H, W)."""
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-widen_factor: stem conv, 3 stages of (depth - 4) / 6 wide blocks, norm + ReLU, pool, ``fc``."""

    def __init__(self, num_classes, norm_layer, in_channels=3, depth=28, widen_factor=10, dropout=0.0, width=16):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"wrn depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth!r}")
        n = (depth - 4) // 6
        widths = [width * widen_factor * 2 ** i for i in range(3)]
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        blocks, cin = [], width
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(WideBlock(cin, w, 2 if (i > 0 and j == 0) else 1, norm_layer, dropout))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = norm_layer(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        """Logits for images ``x`` (N, C, H, W)."""
        x = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))
