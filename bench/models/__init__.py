"""Detectors behind one interface; each backend registers itself by name."""
