"""clipeval: CLIP-Dissect neuron labelling, automatic label evaluation, and agreement with humans."""

from clipeval.errors import ClipevalError

__all__ = ["ClipevalError"]
__version__ = "0.1.0"
