"""VAELLSModule: the optimization choreography of Algorithm 1 (docs/method.md §2), and nothing else.

Networks, the transport operator, the coefficient solvers, the loss weights, the phase schedule and the Psi
update rule are all injected (Hydra builds them from ``conf/model``). The math lives in ``distributions``,
``objectives`` and ``inference``.

Algorithm 1 needs this module's length: the phases of a training step, the Psi accept/reject step and the skips of
non-finite steps share the module's state. What is not the choreography is thin: the model interface's sampling
and likelihood methods delegate to ``vaells.distributions`` and ``vaells.models.importance``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from vaells.distributions import AnchorPrior, TransportPosterior
from vaells.inference import CoefficientSolver, InferenceResult, infer_jointly, restart_inits
from vaells.models.cache import CoefficientCache
from vaells.models.importance import (
    ImportanceSamples,
    LatentDensities,
    bound_log_weights,
    importance_samples,
    importance_terms,
)
from vaells.models.module import ModelBase, NonFiniteLatent, check_latents
from vaells.models.schedule import JOINT, NET, PSI, WARMUP, AcceptRejectRule, Schedule
from vaells.objectives import (
    ForwardTerms,
    LossWeights,
    reconstruction_error,
    reconstruction_log_likelihood,
    vaells_loss,
)
from vaells.transport import TransportOperator

PHASE_CODES = {WARMUP: 0, NET: 1, PSI: 2, JOINT: 3}

log = logging.getLogger(__name__)


class VAELLSModule(ModelBase):
    """VAELLS with manual optimization: a network optimizer (encoder, decoder) and an operator optimizer
    (Psi, and the learnable anchors in input space), stepped according to ``schedule``.

    Args:
        encoder, decoder: f_phi and g_theta (``vaells.networks``).
        transport: the dictionary Psi.
        posterior_solver, prior_solver: MAP coefficient inference for mu -> z and anchor -> z.
        optimizer: partial torch optimizer for the networks (the release: Adam, betas (0.5, 0.999)).
        psi_optimizer: partial torch optimizer for Psi (param group 0) and the anchors (group 1).
        psi_rule: the release's accept/reject step rule (use with SGD), or None for a plain optimizer.
        schedule: warm-up and alternation (``vaells.models.schedule.Schedule``).
        weights: the role-named loss weights; ``1 / weights.post_l1`` is the posterior Laplace scale b.
        latent_dim, num_operators: d and M, checked against the injected modules.
        latent_scale: s; encodings are divided by it before any transport operation (docs/method.md §1).
        noise_std: sigma_eps > 0, the posterior's latent noise; the Gaussian terms of q and p divide by it.
        closest_anchor: use only the lowest-energy anchor in the prior.
        warmup_coeff_scale: Laplace scale during warm-up (the release: 0.01, with no latent noise).
        post_warmup_lr_factor: the network learning rate is multiplied by this once, when warm-up ends.
        anchor_lr: step size of the learnable anchors (the release: 1e-4, in operator phases only).
        learn_anchors: whether class-matched anchors are parameters.
        anchors, anchor_labels: (K * N_a, *input_shape) and (K * N_a,), class-major, from the DataModule;
            None when batches carry per-sample anchors (rotated MNIST).
        gradient_clip_val: optional norm clip for the network gradients (manual optimization cannot use
            the Trainer's).
        warm_starts: start each training step's inference near its answer (docs/method.md §1.3): the posterior
            from the sampled c, the prior from each sample's c_hat of its last step (``vaells.models.cache``),
            both without the L1 continuation and capped at the solvers' ``warm_iter``. Off: the release's starts.
        posterior_restarts: also solve the posterior from the posterior solver's random restarts, beside the
            sampled c (the lowest energy wins).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        transport: TransportOperator,
        posterior_solver: CoefficientSolver,
        prior_solver: CoefficientSolver,
        optimizer: Callable[..., torch.optim.Optimizer],
        psi_optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Schedule,
        weights: LossWeights,
        latent_dim: int,
        num_operators: int,
        psi_rule: AcceptRejectRule | None = None,
        latent_scale: float = 1.0,
        noise_std: float = 1e-4,
        closest_anchor: bool = False,
        warmup_coeff_scale: float = 0.01,
        post_warmup_lr_factor: float = 0.1,
        anchor_lr: float = 1e-4,
        learn_anchors: bool = True,
        anchors: Tensor | None = None,
        anchor_labels: Tensor | None = None,
        gradient_clip_val: float | None = None,
        warm_starts: bool = False,
        posterior_restarts: bool = True,
    ) -> None:
        super().__init__()
        if num_operators < 1:
            raise ValueError(f"model.num_operators must be >= 1, got {num_operators}")
        # Affine operators act on homogeneous coordinates: one more than the encoder's d (docs/method.md §1.5).
        if (transport.latent_dim - int(getattr(transport, "affine", False)), transport.num_operators) != (
                latent_dim, num_operators):
            raise ValueError(
                f"the transport operator has d={transport.latent_dim}, M={transport.num_operators} but the model "
                f"config says model.latent_dim={latent_dim}, model.num_operators={num_operators}"
            )
        for name, value, why, example in (
            ("model.latent_scale", latent_scale, "s divides the encodings", "1.0"),
            ("model.noise_std", noise_std, "sigma_eps divides the Gaussian terms of q(z|x) and p(z), docs/method.md §3",
             "1e-4"),
            ("model.weights.post_l1", weights.post_l1, "1 / post_l1 is the posterior's Laplace scale b", "1.0"),
        ):
            if not value > 0:  # also refuses NaN
                raise ValueError(f"{name}={value} must be > 0 ({why}); e.g. {name}={example}")
        # Screening drops all but each sample's best anchors midway: right for a prior that keeps only the closest
        # anchor, wrong for the mixture over all of them, and meaningless for the posterior's one pair per sample.
        if getattr(prior_solver, "screen_after", None) is not None and not closest_anchor:
            raise ValueError(
                f"model.prior_solver.screen_after={prior_solver.screen_after} needs model.closest_anchor=true (the "
                "mixture prior uses every anchor's coefficients); set model.prior_solver.screen_after=null"
            )
        if getattr(posterior_solver, "screen_after", None) is not None:
            raise ValueError(
                f"model.posterior_solver.screen_after={posterior_solver.screen_after}: the posterior has one pair per "
                "sample, nothing to screen; set model.posterior_solver.screen_after=null"
            )
        self.automatic_optimization = False
        self.latent_dim = transport.latent_dim  # where z lives: d, or d + 1 with affine operators
        self.affine = bool(getattr(transport, "affine", False))
        self.encoder, self.decoder, self.transport = encoder, decoder, transport
        self.posterior_solver, self.prior_solver = posterior_solver, prior_solver
        self.optimizer_factory, self.psi_optimizer_factory = optimizer, psi_optimizer
        self.psi_rule, self.schedule, self.weights = psi_rule, schedule, weights
        self.latent_scale, self.noise_std, self.closest_anchor = latent_scale, noise_std, closest_anchor
        self.warmup_coeff_scale, self.post_warmup_lr_factor = warmup_coeff_scale, post_warmup_lr_factor
        self.anchor_lr, self.gradient_clip_val = anchor_lr, gradient_clip_val
        self.anchor_inputs: nn.Parameter | None = None
        self.anchor_labels: Tensor | None
        if anchors is not None:
            if anchor_labels is None or anchor_labels.shape[0] != anchors.shape[0]:
                raise ValueError("anchors need anchor_labels of the same length (class-major)")
            counts = torch.bincount(anchor_labels)
            if bool((counts != counts[0]).any()):
                raise ValueError(f"every class needs the same number of anchors, got counts {counts.tolist()}")
            self.anchor_inputs = nn.Parameter(anchors.detach().clone().float(), requires_grad=learn_anchors)
            self.register_buffer("anchor_labels", anchor_labels.detach().clone().long())
            self.anchors_per_class = int(counts[0])
        else:
            self.anchor_labels = None
        self._logged_stage: str | None = None  # the stage last named in the log: "warm-up" or "VAELLS"
        self.warm_starts, self.posterior_restarts = bool(warm_starts), bool(posterior_restarts)
        self.coefficient_cache = CoefficientCache()

    # -- the model -----------------------------------------------------------------------------------
    @property
    def coeff_scale(self) -> float:
        """b, the posterior's Laplace scale: 1 / post_l1 (docs/method.md §1.1)."""
        return 1.0 / self.weights.post_l1

    def encode(self, x: Tensor) -> Tensor:
        """mu = f_phi(x) / s in the transport dtype, with the constant coordinate 1 appended for affine operators.
        (B, *input_shape) -> (B, d) (or (B, d + 1))."""
        mu = (self.encoder(x) / self.latent_scale).to(self.transport.psi.dtype)
        return torch.cat([mu, torch.ones_like(mu[..., :1])], -1) if self.affine else mu

    def decode(self, z: Tensor) -> Tensor:
        """g_theta(s z), in the decoder's dtype; affine operators' constant coordinate is dropped first.
        (B, d) (or (B, d + 1)) -> (B, *input_shape)."""
        param = next(self.decoder.parameters())
        z = z[..., :-1] if self.affine else z
        return self.decoder((z * self.latent_scale).to(param.dtype))

    def anchor_latents(self) -> Tensor | None:
        """Encoded class-matched anchors (K * N_a, d), or None with per-sample anchors."""
        return None if self.anchor_inputs is None else self.encode(self.anchor_inputs)

    def batch_anchors(self, batch: dict[str, Tensor]) -> Tensor:
        """Each sample's encoded anchors (B, N_a, d): its own (rotated MNIST) or its class's."""
        if "anchors" in batch:
            a = batch["anchors"]
            return self.encode(a.flatten(0, 1)).view(a.shape[0], a.shape[1], -1)
        if self.anchor_inputs is None:
            raise ValueError("this model has no class-matched anchors and the batch carries no 'anchors'")
        per_class = self.anchor_latents().view(-1, self.anchors_per_class, self.transport.latent_dim)
        return per_class[batch["label"]]

    def infer_coefficients(self, z0: Tensor, z1: Tensor) -> Tensor:
        """MAP coefficients z0 -> z1 with the prior solver (its restarts).  (..., d) -> (..., M)."""
        return self.prior_solver(self.transport.psi, z0, z1).c

    def sample_around(self, anchors: Tensor, num_samples: int) -> Tensor:
        """z ~ q(z | a) around each anchor (A, d) -> (A, num_samples, d): the prior's components (eq. 8)."""
        mu = anchors.unsqueeze(1).expand(-1, num_samples, -1)
        return TransportPosterior(mu, self.transport, self.coeff_scale, self.noise_std).rsample()

    # -- the model interface (vaells.models.base.LatentModel) -----------------------------------------
    def posterior_samples(self, x: Tensor, num_samples: int, spread: float = 1.0) -> Tensor:
        """z = T(c) mu + eps of eq. 5-6 with c ~ Laplace(0, spread * b): ``spread`` scales the coefficients, and
        so how far each sample is carried along the operators' paths; the noise sigma_eps stays.  -> (B, S, d)."""
        q = TransportPosterior(self.encode(x), self.transport, spread * self.coeff_scale, self.noise_std)
        return q.rsample(torch.Size([num_samples])).transpose(0, 1)

    def sample_prior(self, num_samples: int, labels: Tensor | None = None) -> Tensor:
        """z ~ p(z | label) of eq. 8: z ~ q(z | a) around a uniformly drawn anchor of each label's class
        (labels (num_samples,)), or of any class without labels.  -> (num_samples, d).

        Needs class-matched anchors; with per-sample anchors (rotated MNIST) the prior of a sample is built
        from its own anchors: use ``sample_around``.
        """
        anchors = self.anchor_latents()
        if anchors is None:
            raise ValueError("this model's prior is built from each sample's own anchors; use sample_around")
        if labels is None:
            per_sample = anchors.unsqueeze(0).expand(num_samples, -1, -1)  # (N, K * N_a, d): one pool
        else:
            if labels.shape != (num_samples,):
                raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
            per_class = anchors.view(-1, self.anchors_per_class, anchors.shape[-1])  # (K, N_a, d)
            per_sample = per_class[labels.to(anchors.device).long()]  # (N, N_a, d)
        return AnchorPrior(per_sample, self.transport, self.coeff_scale, self.noise_std).rsample()

    @torch.no_grad()
    def log_weights(
        self, x: Tensor, num_samples: int, *, labels: Tensor | None = None, anchors: Tensor | None = None
    ) -> Tensor:
        """Log-weights whose log-mean-exp is a stochastic lower bound on log p(x), comparable with the baselines'
        (``vaells.models.importance.bound_log_weights``, docs/method.md §3): exact densities for (c, z) ~ q, an
        auxiliary density for c, and an unbiased estimate of the unconditional prior over every class's anchors.
        ``labels`` and ``anchors`` are ignored: the bound conditions on nothing but x.  -> (B, S), float64."""
        if not self.unconditional_prior:
            raise ValueError("this model's prior is built from each sample's own anchors (rotated MNIST): it has no "
                             "prior over z without the input, so no bound on log p(x); see release_log_weights")
        return bound_log_weights(self.densities, self.encode(x), self.anchor_latents(), partial(
            self._log_likelihood, x.repeat_interleave(num_samples, 0)), num_samples)

    @property
    def unconditional_prior(self) -> bool:
        """Whether p(z) exists without the input: class-matched anchors (all classes' anchors make the prior), not
        each sample's own (rotated MNIST)."""
        return self.anchor_inputs is not None

    def _log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) = log N(x; g(s z), I / recon), the decoder likelihood every model shares.  -> (N,)."""
        return reconstruction_log_likelihood(x, self.decode(z), self.weights.recon)

    @torch.no_grad()
    def release_log_weights(
        self, x: Tensor, num_samples: int, *, labels: Tensor | None = None, anchors: Tensor | None = None
    ) -> Tensor:
        """The release's recipe for the log-weights (``release_terms``): log_lik + log_prior - log_posterior.
        Neither a bound nor comparable with the baselines' (docs/method.md §3).  -> (B, S), float64."""
        _, terms = self.release_terms(x, num_samples, labels=labels, anchors=anchors)
        return terms["log_lik"] + terms["log_prior"] - terms["log_posterior"]

    @torch.no_grad()
    def release_terms(
        self, x: Tensor, num_samples: int, *, labels: Tensor | None = None, anchors: Tensor | None = None
    ) -> tuple[ImportanceSamples, dict[str, Tensor]]:
        """The release's draws for x (B, *input_shape) and its three terms, each (B, K) float64: ``log_lik`` (the
        shared decoder likelihood) and q(z|x) and the class-conditional p(z | label) each at their MAP coefficients
        (eq. 7-8; ``vaells.models.importance.importance_terms``). ``labels`` (B,) pick each point's class anchors,
        or ``anchors`` (B, N_a, *input_shape) are its own (rotated MNIST)."""
        if anchors is None and labels is None:
            raise ValueError("the release's prior is class-conditional (eq. 8): it needs the points' labels, or "
                             "their own anchors (per-sample anchors, rotated MNIST)")
        batch = {"x": x} | ({"anchors": anchors} if anchors is not None else {"label": labels})
        samples = importance_samples(self.densities, self.encode(x), self.batch_anchors(batch), num_samples)
        b, k = samples.z.shape[:2]
        log_lik = self._log_likelihood(x.repeat_interleave(k, 0), samples.z.flatten(0, 1)).view(b, k).double()
        return samples, {"log_lik": log_lik} | importance_terms(self.densities, samples)

    @property
    def densities(self) -> LatentDensities:
        """The pieces that define q(z | x) and p(z) (``vaells.models.importance``)."""
        return LatentDensities(self.transport, self.posterior_solver, self.prior_solver, self.coeff_scale,
                               self.noise_std, self.latent_scale, self.closest_anchor)

    @torch.no_grad()
    def batch_scores(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``mse`` from the posterior's centre decode(mu), ``sample_mse`` from one posterior sample, and
        ``vaells_objective``, the weighted training loss of eq. 9 without the dictionary term at that sample (not
        an ELBO: the release reports its negative as one)."""
        out = self.forward_terms(batch, self.weights)
        terms = out.terms
        return {"mse": (self.decode(out.mu) - batch["x"]).pow(2).mean(),
                "sample_mse": (out.x_hat - batch["x"]).pow(2).mean(),
                "vaells_objective": terms["loss"] - terms["dictionary"]}

    def forward_terms(self, batch: dict[str, Tensor], weights: LossWeights) -> ForwardTerms:
        """One posterior sample, both inferences and the loss terms (eq. 9), plus what the Psi rule reuses."""
        x = batch["x"]
        mu = self.encode(x)
        anchors = self.batch_anchors(batch)
        # Checked here rather than by the distribution: a training step skips a batch with a NaN (bad data, an
        # overflow) instead of stopping, and the solvers below need finite points.
        posterior = TransportPosterior(mu, self.transport, self.coeff_scale, self.noise_std, self.posterior_solver,
                                       validate_args=False)
        z, c = posterior.rsample_with_coefficients()
        check_latents(mu=mu, anchors=anchors, z=z)
        post, prior_result = self._infer(batch, mu, z, c, anchors)
        prior = AnchorPrior(anchors, self.transport, self.coeff_scale, self.noise_std, self.prior_solver,
                            self.closest_anchor)
        prior_residual, prior_c = prior.components(z, prior_result)
        x_hat = self.decode(z)
        terms = vaells_loss(posterior.residual(z, post.c), post.c, prior_residual, prior_c, self.transport.psi,
                            weights, x, x_hat)
        return ForwardTerms(terms=terms, x=x, x_hat=x_hat, mu=mu, z=z, c=c, anchors=anchors, post=post,
                            prior=prior_result)

    def _infer(self, batch: dict[str, Tensor], mu: Tensor, z: Tensor, c: Tensor,
               anchors: Tensor) -> tuple[InferenceResult, InferenceResult]:
        """c_hat(mu -> z) and c_hat(anchor -> z) for every anchor of each sample, in one solver program."""
        # The sampled c is an excellent start for c_hat(mu -> z): z - T(c) mu is just the noise.
        post_starts = c.unsqueeze(-2)
        if self.posterior_restarts:
            random = restart_inits(c.shape[:-1], c.shape[-1], self.posterior_solver.restarts, dtype=c.dtype,
                                   device=c.device)
            post_starts = torch.cat([post_starts, random], -2)
        post_warm = None
        if self.warm_starts:
            post_warm = torch.zeros(post_starts.shape[:-1], dtype=torch.bool, device=c.device)
            post_warm[..., 0] = True
        posterior = (self.posterior_solver, mu, z, post_starts, post_warm)
        if not (self.warm_starts and self.training):  # evaluation and validation keep no cache
            return tuple(infer_jointly(self.transport.psi, [posterior, (self.prior_solver, anchors, z.unsqueeze(-2),
                                                                          None)]))
        if "index" not in batch:
            raise ValueError("model.warm_starts=true needs training batches that carry each sample's 'index' (every "
                             "built-in dataset does); give your dataset an 'index' key, or set model.warm_starts=false")
        start, hit = self.coefficient_cache.starts(batch["index"], c, anchors.shape[1])
        requests, parts = [posterior], []
        for rows, warm in ((~hit, False), (hit, True)):  # samples seen before start from their cached c_hat
            if bool(rows.any()):
                parts.append(rows)
                starts = start[rows] if warm else None
                flags = torch.ones(start[rows].shape[:-1], dtype=torch.bool, device=c.device) if warm else None
                requests.append((self.prior_solver, anchors[rows], z[rows].unsqueeze(-2), starts, flags))
        post, *results = infer_jointly(self.transport.psi, requests)
        b, n_a = anchors.shape[:2]
        prior = InferenceResult(c=start.new_empty(b, n_a, c.shape[-1]), energy=start.new_empty(b, n_a),
                                num_iters=torch.empty(b, n_a, dtype=torch.long, device=c.device))
        for rows, result in zip(parts, results, strict=True):
            prior.c[rows], prior.energy[rows], prior.num_iters[rows] = result.c, result.energy, result.num_iters
        self.coefficient_cache.store(batch["index"], prior.c, c, self.batch_counter)
        return post, prior

    @torch.no_grad()
    def _operator_loss(self, out: ForwardTerms, eps: Tensor, weights: LossWeights) -> Tensor:
        """The Psi-dependent part of the loss at the current Psi, with the same c, noise eps and c_hat."""
        mu, anchors, c = out.mu.detach(), out.anchors.detach(), out.c
        z = self.transport.transport(mu, c) + eps
        post_residual = z - self.transport.transport(mu, out.post.c)
        prior = AnchorPrior(anchors, self.transport, self.coeff_scale, self.noise_std, self.prior_solver,
                            self.closest_anchor)
        prior_residual, prior_c = prior.components(z, out.prior)
        return vaells_loss(post_residual, out.post.c, prior_residual, prior_c, self.transport.psi, weights)["loss"]

    # -- optimization --------------------------------------------------------------------------------
    def configure_optimizers(self):
        net_params = [*self.encoder.parameters(), *self.decoder.parameters()]
        groups = [{"params": [self.transport.psi]}]
        if self.anchor_inputs is not None and self.anchor_inputs.requires_grad:
            groups.append({"params": [self.anchor_inputs], "lr": self.anchor_lr})
        psi_opt = self.psi_optimizer_factory(groups)
        if self.psi_rule is not None:
            psi_opt.param_groups[0]["lr"] = self.psi_rule.lr
        return [self.optimizer_factory(net_params), psi_opt]

    def _step_networks(self, opt) -> None:
        if self.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        opt.step()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        opt_net, opt_psi = self.optimizers()
        step = self.batch_counter
        phase = self.schedule.phase(step)
        if step == self.schedule.warmup_steps and step > 0:  # end of warm-up: the release's StepLR(0.1), once
            for group in opt_net.param_groups:
                group["lr"] *= self.post_warmup_lr_factor
        self._log_stage(step, phase)
        opt_net.zero_grad()
        opt_psi.zero_grad()
        try:
            if phase == WARMUP:
                out, weights, terms = None, None, {"recon": self._warmup_loss(batch)}
                loss = terms["recon"]
            else:
                weights = self.schedule.weights(self.weights, phase, step)
                out = self.forward_terms(batch, weights)
                terms = out.terms
                loss = terms["loss"]
        except NonFiniteLatent as err:  # found before the loss exists: nothing to backpropagate
            self.skip_nonfinite_latent(err)
            skipped = True
        else:
            skipped = self._skip_nonfinite(terms, loss)
        if not skipped:
            self.consecutive_skips = 0
            if phase in (WARMUP, NET, JOINT):
                self._step_networks(opt_net)
            if phase in (PSI, JOINT):
                self._step_operators(opt_psi, out, weights, terms, step)
            if phase == WARMUP:
                self.log("train/loss", loss, prog_bar=True)
            else:
                self._log_terms("train", terms, out)
        if self._logging_step():
            self.log_dict({"train/phase": float(PHASE_CODES[phase]), "train/batch": float(step)})
        self.log_skips()
        self.batch_counter += 1
        return None

    def _skip_nonfinite(self, terms: dict[str, Tensor], loss: Tensor) -> bool:
        """Backpropagate ``loss`` unless a term is not finite; skip the step (``ModelBase.skip_step``: no optimizer
        step, Psi and the anchors unchanged) if a term or a gradient is not finite, on any rank."""
        if self.skip_if_nonfinite(terms):
            return True
        self.manual_backward(loss)
        bad = self.nonfinite_gradients()
        if not self.any_rank(bool(bad)):
            return False
        self.optimizers()[0].zero_grad()
        self.optimizers()[1].zero_grad()
        self.skip_step(f"non-finite gradient(s) of {bad or '(on another rank)'}")
        return True

    def _log_stage(self, step: int, phase: str) -> None:
        """Name the stage in the run's log when it begins (or when a resumed run picks it up): the warm-up, or
        VAELLS proper, where the coefficient solvers, the prior and the operators come in."""
        stage = "warm-up" if phase == WARMUP else "VAELLS"
        if stage == self._logged_stage:
            return
        self._logged_stage = stage
        if stage == "warm-up":
            log.info("batch %d: warm-up, the autoencoder alone, until batch %d", step, self.schedule.warmup_steps)
        else:
            lr = self.optimizers()[0].param_groups[0]["lr"]
            log.info("batch %d: VAELLS phase (coefficient inference and the anchor prior from here on): %s; "
                     "network lr %.3g", step, self.schedule.describe_vaells(), lr)

    def _warmup_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Autoencoder-only warm-up: a small Laplace scale, no latent noise, the recon term alone."""
        x = batch["x"]
        mu = self.encode(x)
        check_latents(mu=mu)  # a NaN batch is skipped (``training_step``), not refused by the distribution
        z = TransportPosterior(mu, self.transport, self.warmup_coeff_scale, 0.0).rsample()
        return self.weights.recon * reconstruction_error(x, self.decode(z)).mean()

    def _step_operators(self, opt_psi, out: ForwardTerms, weights: LossWeights, terms: dict, step: int) -> None:
        if self.psi_rule is None:
            opt_psi.step()
            self.transport.renormalise_()
            return
        # The release's rule: take the step, re-evaluate the operator loss with the same c_hat, undo it if
        # the loss went up. Only Psi is judged; the anchors' small step is always kept.
        # The sample's noise, z - T(c) mu, taken before Psi moves, so the new Psi is judged on the same z noise.
        eps = (out.z - self.transport.transport(out.mu, out.c)).detach()
        old_psi = self.transport.psi.detach().clone()
        # Under DDP both losses are averaged over the ranks' batches, and the decision is made the same on every
        # rank, so Psi stays identical everywhere (the gradients already are: DDP averages them).
        old_loss = self._rank_mean(terms["loss"].detach() - terms["recon"].detach())
        opt_psi.param_groups[0]["lr"] = self.psi_rule.lr
        opt_psi.step()
        self.transport.renormalise_()  # normalised operators are judged where they will be
        new_loss = self._rank_mean(self._operator_loss(out, eps, weights))
        accepted = bool(torch.isfinite(new_loss)) and bool(new_loss <= old_loss)
        if self._trainer is not None and self.trainer.world_size > 1:
            accepted = bool(self.trainer.strategy.reduce_boolean_decision(accepted, all=True))
        if not accepted:
            with torch.no_grad():
                self.transport.psi.copy_(old_psi)
        self.psi_rule.update(accepted, step - self.schedule.warmup_steps)
        if self._logging_step():
            self.log_dict({"train/psi_accept_rate": self.psi_rule.accept_rate})

    def _rank_mean(self, value: Tensor) -> Tensor:
        """``value`` averaged over the DDP ranks (itself on one process)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value, reduce_op="mean")

    def _log_terms(self, stage: str, terms: dict[str, Tensor], out: ForwardTerms) -> None:
        prior: InferenceResult = out.prior
        batch_size = out.mu.shape[0]
        # Under DDP every rank validates the whole validation split (use_distributed_sampler: false): the epoch
        # means agree across ranks, and syncing them only says so (and keeps Lightning from warning each epoch).
        sync = stage == "val"
        self.log(f"{stage}/loss", terms["loss"], prog_bar=True, batch_size=batch_size, sync_dist=sync)
        if stage == "train" and not self._logging_step():
            return  # the rest would cost ~10 ms a step in Lightning's logging, and the logger would drop it anyway
        metrics = {f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"}
        metrics[f"{stage}/mse"] = (out.x_hat - out.x).pow(2).mean().detach()  # per dimension
        self.log_dict(metrics, prog_bar=False, batch_size=batch_size, sync_dist=sync)
        if stage == "train":
            psi_lr = self.psi_rule.lr if self.psi_rule is not None else self.optimizers()[1].param_groups[0]["lr"]
            diagnostics = {
                "train/psi_lr": psi_lr,
                "train/psi_frobenius": self.transport.frobenius().detach(),
                "train/prior_c_zero_frac": (prior.c == 0).float().mean(),
                "train/prior_c_abs_mean": prior.c.abs().mean(),
                "train/post_c_abs_mean": out.post.c.abs().mean(),
                "train/prior_solver_iters": prior.num_iters.float().mean(),
            }
            for m, (norm, drift) in enumerate(zip(self.transport.norms(), self.transport.drift(), strict=True)):
                diagnostics |= {f"train/psi_norm_{m}": norm, f"train/psi_drift_{m}": drift}
            self.log_to_loggers(diagnostics)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.forward_terms(batch, self.weights)
        self._log_terms("val", out.terms, out)

    # -- checkpoints ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["vaells"] = {
            "batch_counter": self.batch_counter,
            "phase": self.schedule.phase(self.batch_counter),
            "psi_rule": self.psi_rule.state_dict() if self.psi_rule is not None else None,
        }
        if self.warm_starts:  # a resumed run starts its warm starts where this one stood, rank by rank
            checkpoint["vaells"]["coefficient_cache"] = self._rank_caches()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("vaells", {})
        self.batch_counter = state.get("batch_counter", 0)
        if self.psi_rule is not None and state.get("psi_rule") is not None:
            self.psi_rule.load_state_dict(state["psi_rule"])
        self.coefficient_cache = CoefficientCache()
        caches = state.get("coefficient_cache")
        if caches:
            rank, world = (0, 1) if self._trainer is None else (self.trainer.global_rank, self.trainer.world_size)
            if len(caches) == world:  # the same ranks: each takes its own back, so the run resumes exactly
                self.coefficient_cache.load_state_dict(caches[rank])
            else:  # another number of processes: every rank starts from the newest entry of each sample
                for cache in caches:
                    part = CoefficientCache()
                    part.load_state_dict(cache)
                    self.coefficient_cache.merge(part)

    def _rank_caches(self) -> list[dict[str, Tensor]]:
        """Every rank's coefficient cache (``state_dict``), in rank order: under DDP each rank saw its own samples."""
        if self._trainer is None or self.trainer.world_size == 1:
            return [self.coefficient_cache.state_dict()]
        # all_gather needs equal shapes: every rank grows its cache to the largest one first.
        size = int(self.all_gather(torch.tensor(self.coefficient_cache.step.shape[0], device=self.device)).max())
        self.coefficient_cache.grow(size)
        state = {k: self.all_gather(v.to(self.device)).cpu() for k, v in self.coefficient_cache.state_dict().items()}
        return [{k: v[rank] for k, v in state.items()} for rank in range(state["step"].shape[0])]
