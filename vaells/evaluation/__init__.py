"""Metrics of trained models, through the model interface (``vaells.models.base.LatentModel``) only:
``latent`` (latent structure: knn accuracy, trustworthiness, continuity), ``images`` (classifier, rotation,
class preservation, matched variation), ``comparison`` (the paper's comparative claims), ``paths`` (whether
interpolations stay on the manifold), ``summary`` (every metric of a model on its test split), ``monitors``
(metrics logged during training). Nothing here imports ``vaells.figures``."""
