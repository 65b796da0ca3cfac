"""Numerics floor: formats, rounding emulation, tensor statistics, loss scaling (torch only)."""
