"""GaussianMoE (work in progress)."""
class GaussianMoE:
    pass
