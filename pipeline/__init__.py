"""Multi-level feature cache, staged reader/assembler/compute pipeline and trainer loop (arrives with issue 4)."""
