"""VGG-11/13/16/19 with a norm after every conv (CIFAR style: global pooling, one Linear classifier ``fc``).

Max-pools that would shrink the feature map below 1x1 are skipped, so small inputs (8x8, 16x16) work.
``conv_bias`` defaults to True: the paper's VGG-11 keeps its conv biases.
"""
from __future__ import annotations

from torch import nn

PLANS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class MaybePool(nn.MaxPool2d):
    """2x2 max-pool that passes inputs smaller than 2x2 through unchanged."""

    def __init__(self):
        super().__init__(2, 2)

    def forward(self, x):
        """``x`` max-pooled 2x2, or unchanged when smaller than 2x2."""
        return x if min(x.shape[-2:]) < 2 else super().forward(x)


class VGG(nn.Module):
    """VGG-``depth``: PLANS[depth] of conv + norm + ReLU and max-pools, global average pool, ``fc``."""

    def __init__(self, depth, num_classes, norm_layer, in_channels=3, conv_bias=True, width_mult=1.0):
        super().__init__()
        layers, cin = [], in_channels
        for v in PLANS[depth]:
            if v == "M":
                layers.append(MaybePool())
            else:
                cout = max(1, int(round(v * width_mult)))
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=conv_bias), norm_layer(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        """Logits for images ``x`` (N, C, H, W)."""
        return self.fc(self.pool(self.features(x)).flatten(1))
