"""Math-Shepherd (arXiv:2312.08935): Monte-Carlo step labels, a process reward model, best-of-N verification."""
