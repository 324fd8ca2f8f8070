"""Judging: verdicts per coordinate (the C accumulator), the noise of f, kink and noise re-checks."""
