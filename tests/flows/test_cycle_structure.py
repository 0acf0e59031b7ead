"""The parent flow only calls stage flows and tasks, so every arrow of the loop shows in the Prefect UI."""

from __future__ import annotations

import ast
import inspect

from labelloop.flows import cycle

# Not arrows of the loop: params resolution at the flow's entry and the workspace lock around it.
ALLOWED_DOMAIN_CALLS = {"resolve", "workspace_lock"}


def _imported_from(tree: ast.Module) -> dict[str, str]:
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _root_name(call: ast.Call) -> str | None:
    func = call.func
    while isinstance(func, ast.Attribute):
        func = func.value
    return func.id if isinstance(func, ast.Name) else None


def direct_domain_calls(source: str) -> list[str]:
    """Calls in the module's functions to labelloop code that is neither a task nor a flow."""
    tree = ast.parse(source)
    imported = _imported_from(tree)
    offending = []
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
            root = _root_name(call)
            origin = imported.get(root or "", "")
            if not origin.startswith("labelloop.") or root in ALLOWED_DOMAIN_CALLS:
                continue
            if origin.startswith(("labelloop.tasks.", "labelloop.flows.")):
                continue
            offending.append(f"{function.name}: {ast.unparse(call.func)} ({origin})")
    return offending


def test_the_parent_flow_calls_only_flows_and_tasks():
    assert direct_domain_calls(inspect.getsource(cycle)) == []


def test_a_direct_call_outside_a_task_is_reported():
    source = ("from labelloop.adapters import tracking\nfrom labelloop.tasks import gate as gate_tasks\n"
              "def f():\n    gate_tasks.stop_halt(1, 2)\n    tracking.alias_version(1, 2, 3)\n")
    assert direct_domain_calls(source) == ["f: tracking.alias_version (labelloop.adapters.tracking)"]
