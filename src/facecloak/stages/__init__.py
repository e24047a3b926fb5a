"""The optimisation stages: each LightningModule with its Lightning-free config and data, and their plumbing."""
