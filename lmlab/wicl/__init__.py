"""Weighted in-context learning (arXiv:2310.08309): MSP, weight search, demonstration weights inside attention."""
