"""lmlab: ten recent LLM research systems on one fast native inference substrate."""

__version__ = "0.1.0"

SYSTEMS = ("glan", "deepeval", "specdec", "moe", "probes", "shepherd", "amr", "wicl", "infocl", "socratic")
"""Subpackages, in report order. Each may provide `cli.register(app)` and `reproduce.run(ctx)`."""
