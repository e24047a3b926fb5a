"""Evaluation building blocks: image quality, social-network degradations, protection success, benchmark data."""
