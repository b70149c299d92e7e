"""fuseface.eval: evaluation protocols reproduced from the anchors' scripts (PROTOCOLS.md).

Metric code takes arrays, never models or paths (file formats live in ``fuseface.data``, the
orchestration in ``fuseface.cli.evaluate``):

* :mod:`~fuseface.eval.verification`: insightface 10-fold accuracy and VAL@FAR (LFW, .bin sets);
* :mod:`~fuseface.eval.lfw`: the LFW View-2 pairs protocol on features;
* :mod:`~fuseface.eval.roc`: ROC identical to scikit-learn's and TAR at the nearest FPR;
* :mod:`~fuseface.eval.templates`: insightface IJB template pooling (media mean, template sum, L2);
* :mod:`~fuseface.eval.ijb`: IJB-B/C 1:1 (TAR@FAR, AUC) and 1:N (TPIR@FPIR, CMC; legacy variant);
* :mod:`~fuseface.eval.identification`: closed-set CMC (TinyFace), PFE's DIR_FAR (IJB-S), TPIR@FPIR;
* :mod:`~fuseface.eval.report`: result JSON, markdown tables, ROC / CMC plots.

Nothing is imported here, so ``import fuseface.eval`` is free.
"""
