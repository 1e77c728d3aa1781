"""What ``docs/results.md`` shows for each experiment: its tables (rows of a model or of a control, columns of
``metrics.json`` keys; docs/metrics.md) and the paper's claims, each tested on the results over seeds.

A row names the job it reads (``experiment/model``, or ``table2/vaells/M2_Na8``) and how each column's key reads
for it: ``"{}"`` is the column's own key, ``"linear_{}"`` the linear path's, ``"{}_zero_psi"`` a control's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASELINES = ("vae", "vampprior", "svae")
# Table 2's M = 8, N_a = 8 is natural MNIST's default: its row reads that experiment's VAELLS jobs.
TABLE2_JOBS = {"M8_Na8": "natural_mnist/vaells"}
MODEL_LABELS = {"vaells": "VAELLS", "vae": "VAE", "vampprior": "VampPrior", "svae": "SVAE"}


@dataclass(frozen=True)
class Row:
    label: str
    job: str  # the job's name less its seed: experiment/model[/...]
    key: str | dict[str, str] = "{}"  # a format of the column's key, or each column's key
    seed: int | None = None  # one seed's result only (a row per seed); None: every seed's

    def key_for(self, column: str) -> str | None:
        if isinstance(self.key, dict):
            return self.key.get(column)
        return self.key.format(column)


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    note: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    tables: tuple[Table, ...]
    figure_key: str = ""  # the headline metric drawn per row and seed in docs/figures/results/<name>.png
    claims: tuple[str, ...] = field(default_factory=tuple)
    command: str = "python -m vaells.results run paper"  # what writes its results
    figure_control: str = ""  # a control's key drawn beside each row's headline metric (the straight line's)


def model_rows(experiment: str, key: str = "{}") -> tuple[Row, ...]:
    return tuple(Row(MODEL_LABELS[m], f"{experiment}/{m}", key) for m in ("vaells", *BASELINES))


def vaells_controls(experiment: str, *, linear: bool = False) -> tuple[Row, ...]:
    job = f"{experiment}/vaells"
    rows = (Row("VAELLS", job), Row("linear path (control)", job, "linear_{}")) if linear else (Row("VAELLS", job),)
    return rows + (Row("Psi = 0 (control)", job, "{}_zero_psi"), Row("Psi at its initialisation (control)", job,
                                                                          "{}_init_psi"))


def likelihood_table(experiment: str, note: str = "") -> Table:
    recipe = {"log_likelihood": "log_likelihood_release_recipe",
              "log_likelihood_stderr": "log_likelihood_release_recipe_stderr"}
    return Table("Log-likelihood: a stochastic lower bound on log p(x) for every model, K = 100 (nats)",
                 ("log_likelihood", "log_likelihood_stderr"),
                 (*model_rows(experiment), Row("VAELLS, the release's recipe (not a bound)", f"{experiment}/vaells",
                                               recipe)), note)


def synthetic(name: str, title: str) -> Experiment:
    job = f"{name}/vaells"
    prior_rows = (Row("VAELLS, sampled at b = 1 / post_l1", job),
                  Row("VAELLS, at the loss's b = 1 / prior_l1", job, {"prior_fit": "prior_fit_loss_scale"}),
                  Row("anchor point mass (control)", job, {"prior_fit": "prior_fit_anchor_points"}),
                  *model_rows(name)[1:])
    return Experiment(name, title, (
        Table("Transport paths between test pairs", ("path_manifold_error", "path_endpoint_error",
                                                     "path_endpoint_distance"), vaells_controls(name, linear=True)),
        Table("The prior's fit to the data (decoded prior samples against the noiseless manifold)",
              ("prior_fit", "prior_manifold_error", "prior_coverage_error"), prior_rows),
        Table("Reconstruction, neighbourhoods and the operators",
              ("mse", "sample_mse", "trustworthiness", "knn_accuracy", "operator_reading"), model_rows(name)),
        likelihood_table(name),
    ), figure_key="path_manifold_error", claims=(f"{name}_paths", f"{name}_prior",
                                                                     f"{name}_prior_loss_scale"))


def authors_synthetic(name: str, title: str) -> tuple[Table, ...]:
    """The authors' model and VAELLS's default trained on the same data map, with the path controls of each."""
    authors, ours = f"{name}/authors_map/release", f"{name}/authors_map/vaells"
    return (
        Table(f"{title} on the authors' map: transport paths", ("path_manifold_error", "path_endpoint_error",
                                                                 "path_endpoint_distance"),
              (Row("the authors' model", authors), Row("its linear path (control)", authors, "linear_{}"),
               Row("its Psi = 0 (control)", authors, "{}_zero_psi"),
               Row("its Psi at a fresh start (control)", authors, "{}_init_psi"),
               Row("VAELLS, trained here on the authors' map", ours),
               Row("its linear path (control)", ours, "linear_{}"),
               Row("its Psi at its initialisation (control)", ours, "{}_init_psi"))),
        Table(f"{title} on the authors' map: prior, reconstruction and operators",
              ("prior_fit", "mse", "knn_accuracy", "operator_reading", "log_likelihood"),
              (Row("the authors' model", authors), Row("VAELLS, trained here on the authors' map", ours),
               Row("VAELLS, this project's default map", f"{name}/vaells"))),
    )


AUTHORS = Experiment("authors", "The authors' trained models", (
    *authors_synthetic("swiss_roll", "Swiss roll"),
    *authors_synthetic("concentric_circles", "Circles"),
    Table("Natural MNIST (the authors' model: M = 4, N_a = 8, full MNIST; VAELLS: M = 8, N_a = 8, the data here)",
          ("class_preservation_matched", "class_preservation", "mse", "knn_accuracy", "log_likelihood"),
          (Row("the authors' model", "natural_mnist/release"),
           Row("its Psi at a fresh start (control)", "natural_mnist/release", "{}_init_psi"),
           Row("VAELLS, trained here", "natural_mnist/vaells"))),
), figure_key="path_manifold_error", claims=("authors_swiss_roll", "authors_concentric_circles"),
    command="python -m vaells.results release DIR; VAELLS_RELEASE_DIR=DIR python -m vaells.results run authors")


MAPS = (1, 2, 3, 4, 5)  # data.projection_seed of conf/suite/maps.yaml; the default map's is 2021


def random_maps() -> Experiment:
    """The swiss roll and the circles under other random linear maps: a row per map, the path controls beside."""
    tables = tuple(
        Table(f"{title} under five other random maps", ("path_manifold_error", "linear_path_manifold_error",
                                                         "path_manifold_error_init_psi", "path_endpoint_error",
                                                         "operator_reading"),
              (Row("the default map (2021)", f"{name}/vaells"),
               *(Row(f"map {k}", f"{name}/map{k}/vaells") for k in MAPS)))
        for name, title in (("swiss_roll", "Swiss roll"), ("concentric_circles", "Circles")))
    return Experiment("maps", "Any random map", tables, figure_key="path_manifold_error",
                      claims=("maps_swiss_roll", "maps_concentric_circles"),
                      command="python -m vaells.results run maps --jobs 2", figure_control="linear_path_manifold_error")


MANIFOLD_COLUMNS = ("path_manifold_error", "linear_path_manifold_error", "path_manifold_error_init_psi",
                    "path_endpoint_error", "operator_reading", "operator_drift", "prior_fit", "prior_fit_anchor_points",
                    "knn_accuracy")


def manifold_suite() -> Experiment:
    """A row per manifold, embedding and seed (conf/suite/manifolds.yaml), with the path controls beside the paths."""
    from vaells.data.manifolds import MANIFOLDS

    tables = tuple(
        Table(f"VAELLS on the {embedding} embedding", MANIFOLD_COLUMNS,
              tuple(Row(f"{name}, seed {seed}", f"manifold_suite/{name}/{embedding}/vaells", seed=seed)
                    for name in MANIFOLDS for seed in (0, 1, 2)),
              "The controls: `linear_path_manifold_error` (straight latent paths), `path_manifold_error_init_psi` "
              "(Psi at its initialisation) and `prior_fit_anchor_points` (the anchors alone).")
        for embedding in ("linear", "nonlinear"))
    return Experiment("manifold_suite", "The manifold suite", tables, figure_key="path_manifold_error",
                      claims=("manifold_suite",), command="python -m vaells.results run manifolds --jobs 2",
                      figure_control="linear_path_manifold_error")


EXPERIMENTS = (
    synthetic("swiss_roll", "Swiss roll"),
    synthetic("concentric_circles", "Concentric circles"),
    Experiment("rotated_mnist", "Rotated MNIST", (
        Table("Rotation along the transport paths (VAELLS and its controls)",
              ("rotation_order", "rotation_match", "rotation_ceiling"), vaells_controls("rotated_mnist")),
        Table("Posterior samples at matched variation, every model",
              ("rotation_share_matched", "matched_spread"), model_rows("rotated_mnist")),
        Table("Reconstruction and classes", ("mse", "sample_mse", "knn_accuracy"), model_rows("rotated_mnist")),
        likelihood_table("rotated_mnist", "VAELLS has no bound here: its prior is built from each test digit's own "
                         "rotated copies, so it does not exist without the input ([metrics](metrics.md))."),
    ), figure_key="rotation_order", claims=("rotated_mnist_rotation",)),
    Experiment("natural_mnist", "Natural MNIST", (
        Table("Class preservation of posterior samples", ("class_preservation_matched", "class_preservation",
                                                          "class_preservation_ceiling", "matched_spread"),
              (*model_rows("natural_mnist"), Row("VAELLS, Psi at its initialisation (control)",
                                                 "natural_mnist/vaells", "{}_init_psi"))),
        Table("Reconstruction and classes", ("mse", "sample_mse", "knn_accuracy"), model_rows("natural_mnist")),
        likelihood_table("natural_mnist"),
    ), figure_key="class_preservation_matched", claims=("natural_mnist_classes",)),
    Experiment("table2", "Table 2: VAELLS on natural MNIST at five (M, N_a)", (
        Table("Log-likelihood (bound, K = 100) and reconstruction by number of operators M and anchors per class N_a",
              ("log_likelihood", "log_likelihood_stderr", "log_likelihood_release_recipe", "mse"),
              tuple(Row(f"M = {r[1]}, N_a = {r.split('Na')[1]}", TABLE2_JOBS.get(r, f"table2/vaells/{r}"))
                    for r in ("M2_Na8", "M4_Na8", "M8_Na8", "M4_Na12", "M4_Na16"))),
    ), figure_key="log_likelihood", claims=("table2_operators",)),
    AUTHORS,
    random_maps(),
    manifold_suite(),
)
