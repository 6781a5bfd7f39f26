"""The Celery application, the tasks and the refinement import each other in one
direction only: fasttalk/celery.py -> stt/tasks.py -> stt/refinement.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"fasttalk.celery": "fasttalk/celery.py", "stt.tasks": "stt/tasks.py", "stt.refinement": "stt/refinement.py"}


def imported(path: str) -> set[str]:
    """Modules of MODULES imported anywhere in the file (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


def test_no_import_cycle_between_the_celery_app_tasks_and_refinement():
    graph = {name: imported(path) - {name} for name, path in MODULES.items()}
    graph["fasttalk.celery"].add("stt.tasks")  # app.autodiscover_tasks() imports it

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step}))
                   for step in graph[start])

    cycles = [name for name in MODULES if reaches(name, name)]
    assert cycles == [], f"import cycles through {cycles}: {graph}"
