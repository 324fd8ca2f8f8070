"""The engine: who evaluates f at perturbed points (serial, threads, the Numba kernel, an
executor), chosen by one planner and counted by the backend that ran them."""
