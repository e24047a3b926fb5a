"""facecloak: protect face photos from face-recognition systems while keeping them natural.

The library part (models, losses, alignment, registry) imports neither Lightning nor W&B;
the Lightning modules and the CLI sit on top of it.
"""

__version__ = "0.1.0"
