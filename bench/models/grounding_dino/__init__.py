"""Grounding DINO through ``transformers`` (``GroundingDinoForObjectDetection``) behind the detector interface."""
