"""Embedding heads fed with a backbone's stage maps and its global embedding.

A head is built by the backbone as ``HeadCls(stage_channels, stage_sizes, num_features, **head_kw)``
and called as ``head(stages, global_embedding) -> (embedding, aux)``; it is registered under the
``head`` kind of :mod:`fuseface.registry` (``"lgaf"`` -> :class:`fuseface.nn.heads.lgaf.LGAFHead`).
"""
