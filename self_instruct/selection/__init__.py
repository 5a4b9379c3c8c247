"""Data selection: the IFD score from a small local model (ifd), and which records a budget keeps (pick)."""
