import sys
from pathlib import Path

# tests import the reference implementations in tests/naive.py as `naive`
sys.path.insert(0, str(Path(__file__).resolve().parent))
