"""Figures of trained models: ``plotting`` (matplotlib functions of tensors), ``images`` (posterior rings and
operator paths of image models) and ``paths`` (transport and linear paths between inputs). The callback that
draws them during training, and ``save_run_figures`` for evaluate.py, are in ``vaells.training.figures``."""
