"""Probe image sets and concept sets."""
