"""Metrics of trained models, through the model interface (``vaells.models.base.LatentModel``) only, one module
per family: ``latent`` (knn accuracy, trustworthiness, continuity), ``rotation`` (whether an operator rotates
digits, and whether any linear flow could), ``classifier`` and ``preservation`` (whether posterior samples keep
the digit's class), ``operators`` (what each learned operator is), ``paths`` (whether interpolations stay on the
manifold), ``comparison`` (the paper's comparative claims), ``likelihood`` (the importance-sampled log-likelihood),
``summary`` (every metric of a model on its test split); ``common`` and ``progress`` are the helpers they share.
Nothing here imports ``vaells.figures`` or ``vaells.training``."""
