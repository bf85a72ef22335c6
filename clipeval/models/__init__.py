"""Image-text, target and VQA model backends."""
