"""GAN inversion: map photos to a generator's latent codes (plain PyTorch, no Lightning)."""

from facecloak.inversion.projector import ProjectionResult, ProjectorConfig, e4e_init, project

__all__ = ["ProjectionResult", "ProjectorConfig", "e4e_init", "project"]
