"""Math-Shepherd (arXiv:2312.08935): Monte-Carlo step labels, a process reward model, best-of-N verification."""

from . import policy as _policy  # noqa: E402,F401  registers the `shepherd-policy` model alias
