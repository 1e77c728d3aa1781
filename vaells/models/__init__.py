"""The models of the project behind one small interface (``vaells.models.base.LatentModel``): VAELLS and the
paper's comparisons, a Gaussian VAE, a VampPrior VAE and a hyperspherical VAE."""
