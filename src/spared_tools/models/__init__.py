"""Torch modules and Lightning training plans."""
