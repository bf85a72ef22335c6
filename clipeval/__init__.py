"""clipeval: CLIP-Dissect neuron labelling, automatic label evaluation, and agreement with humans.

Subpackages: datasets (probe images, concept sets), models (loading targets, labellers, judges),
compute (devices, batches, local and Ray engines), dissect (one labelling run), evaluators (the judges),
analysis (numbers from stored scores), store (DuckDB, the only SQL), render (HTML and figures), ui (the
Streamlit side), demo (the offline demo). cli/ is the command line; errors.py and config.py are shared.
"""

from clipeval.errors import ClipevalError

__all__ = ["ClipevalError"]
__version__ = "0.1.0"
