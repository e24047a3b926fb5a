"""The Lightning layer: optimisation stages as LightningModules and the per-image artifacts they hand on."""
