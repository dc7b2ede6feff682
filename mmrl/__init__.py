"""mmrl — reinforcement-learning post-training of vision-language models.

See README.md for usage and ../DESIGN (shared) for the map. Components live in sub-packages
(`mmrl.perception`, `mmrl.rewards`, `mmrl.datasets`, `mmrl.kernels`) so that they never shadow the
Hugging Face `datasets` / `kernels` packages when Python runs from the repository root.
"""

__version__ = "0.1.0"
