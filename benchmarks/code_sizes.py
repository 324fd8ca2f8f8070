"""The largest modules and functions/classes of a fastgrad checkout, in lines (with a def's
parameter count): the numbers a refactoring is judged by.

    python benchmarks/code_sizes.py [CHECKOUT]
"""

import ast
import sys
from pathlib import Path


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    root = Path(args[0] if args else Path(__file__).resolve().parent.parent) / "fastgrad"
    modules, defs = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(root.parent)
        modules.append((len(text.splitlines()), str(where)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                size = node.end_lineno - node.lineno + 1
                what = ("class" if isinstance(node, ast.ClassDef) else
                        f"def, {len(node.args.args) + len(node.args.kwonlyargs)} params")
                defs.append((size, f"{where}:{node.name} ({what})"))
    print("largest modules:", ", ".join(f"{n} {s}" for s, n in sorted(modules, reverse=True)[:6]))
    print("largest functions/classes:",
          ", ".join(f"{n} {s}" for s, n in sorted(defs, reverse=True)[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
