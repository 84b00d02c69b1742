"""Sample-quality and likelihood metrics."""
from .toy import energy_distance, toy_metrics

__all__ = ["energy_distance", "toy_metrics"]
