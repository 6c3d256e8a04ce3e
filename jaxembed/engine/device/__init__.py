"""Compiled programs on the mesh: the per-bucket runner (and its multi-host stand-in), memory
plans from compiled programs, the persistent compile cache."""
