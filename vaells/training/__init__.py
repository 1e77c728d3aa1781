"""Training plumbing, all the Lightning callbacks in one place: ``checkpoints`` (atomic writes, ``last.ckpt`` on a
timer and at SIGTERM or Ctrl-C), ``monitors`` (last-epoch validation, the operator monitor, the step decay, the warm-up
check), ``figures`` (figures during training) and ``progress`` (progress bars or plain progress lines)."""
