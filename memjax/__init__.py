"""memjax: memorization studies (Arpit et al., ICML 2017) on vmapped ensembles in JAX."""

__version__ = "0.1.0"
