"""Evaluation building blocks: social-network degradations, protection success, benchmark data."""
