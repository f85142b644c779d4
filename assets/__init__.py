"""Data shipped with Portrait Studio, installed as the package ``studio.assets``."""
