"""Figures of trained models: ``plotting`` (matplotlib functions of tensors), ``images`` (posterior rings and
operator paths of image models) and ``callbacks`` (``LatentFigures``, the Lightning callback, rank zero only,
and ``save_run_figures`` for evaluate.py)."""
