"""Library entry point for sampling (the brief's `histoldm.sample`); the code lives in histoldm.sampling."""

from histoldm.sampling.run import SampleConfig, run_sample

__all__ = ["SampleConfig", "run_sample"]
