"""AMR parsing with Reverse Graph Linearization (Gao et al., arXiv:2310.08860) on penman, smatch and smatchpp."""
