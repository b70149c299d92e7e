"""The official MSNet forward pass, transcribed for side-by-side measurement only.

Written from ``docs/METHODS.md`` sections 2.2-2.3, which describe ``Zoey-SiZhou/MSConv``
``MSConv/backbones/model.py`` (commit 281e360) line by line. The modules are ours
(:mod:`fuseface.nn.backbones.msnet`: the official structure and state-dict keys); only *how* the
same function is computed changes, to the way the official code computes it:

* each MSConv concatenates its two branch outputs and views them as (B, 2, C, H, W) before the
  multiplication and the subtraction (an SKNet habit), with plain autograd throughout;
* the head uses ``torch.squeeze`` (bug B2 included: a 1-D output at batch size 1).

So the two networks hold the same weights and give the same output
(``benchmarks/backbone_speed.py`` checks it before timing). Not part of the package, and not a
parity check: both sides are our modules. Parity with the official MSConv outputs is tested in
``tests/test_official_parity_models.py``.
"""

from __future__ import annotations

import torch

from fuseface.nn.backbones.msnet import MSNet, msnet50
from fuseface.nn.layers.msconv import GATE_EPS, MSConv


class OfficialMSConv(MSConv):
    """Our module's parameters, the official forward computation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        feats = torch.cat([conv(x) for conv in self.convs], dim=1)
        feats = feats.view(b, 2, self.channels, feats.shape[2], feats.shape[3])
        u1, u2 = feats[:, 0], feats[:, 1]
        z = self.fc(self.gap(u1 * u2))  # MO, squeeze, bottleneck
        a1, a2 = self.fcs[0](z), self.fcs[1](z)
        c = torch.sigmoid(a1 - a2 + GATE_EPS)
        return self.fc_d(c * (u1 - u2) + u2)  # SO, projection


class OfficialMSNet(MSNet):
    def forward(self, x: torch.Tensor, return_stages: bool = False) -> torch.Tensor:
        x = self.forward_stages(x)[-1]
        return self.classifier(torch.squeeze(self.gap(x)))


def official_msnet50() -> MSNet:
    """msnet50 whose MSConv modules and head compute as the official code does."""
    model = msnet50()
    model.__class__ = OfficialMSNet
    for m in model.modules():
        if type(m) is MSConv:
            m.__class__ = OfficialMSConv
    return model
