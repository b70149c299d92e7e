"""Margin losses on cosine logits and the Partial FC classifier.

``CombinedMarginLoss`` / ``ArcFace`` / ``CosFace`` / ``AdaFaceLoss`` live in :mod:`.margin`,
``PartialFC`` in :mod:`.partial_fc`.
"""

from fuseface.nn.losses.margin import AdaFaceLoss, ArcFace, CombinedMarginLoss, CosFace, build_margin_loss
from fuseface.nn.losses.partial_fc import PartialFC

__all__ = ["AdaFaceLoss", "ArcFace", "CombinedMarginLoss", "CosFace", "PartialFC", "build_margin_loss"]
