"""Sampling: solvers over a denoiser callable, classifier-free guidance, caption inputs, the run."""
