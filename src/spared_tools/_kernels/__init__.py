"""Pure array kernels (numpy / numba / torch); never import AnnData."""
