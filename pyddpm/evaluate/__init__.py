"""Sample-quality and likelihood metrics; `pyddpm-eval` (``cli``) puts them together for a run directory."""
from .frechet import frechet_distance, gaussian_statistics, quality_metrics
from .likelihood import Bound, bound_terms, discretized_gaussian_log_likelihood, pixels_to_model, variational_bound
from .ode_likelihood import OdeLikelihood, ode_log_likelihood
from .toy import energy_distance, toy_metrics

__all__ = ["Bound", "OdeLikelihood", "bound_terms", "discretized_gaussian_log_likelihood", "energy_distance",
           "frechet_distance", "gaussian_statistics", "ode_log_likelihood", "pixels_to_model", "quality_metrics",
           "toy_metrics", "variational_bound"]
