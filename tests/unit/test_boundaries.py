"""The boundaries between obs_sdk's parts, read from the source (AST; nothing is imported).

The parts (see docs/architecture.md): the scope (who is acting, carried in OTel context), the
hot path (decoration, templates, generated wrappers, the intake), delivery (the dispatcher,
queues, workers, sinks, redaction), the ledger (SQL tables, transactions, metering,
idempotency, seals) and the public modules. Each rule below is one line of data with why.
A rule checks either module-level imports only ("module": what importing the module pulls
in; an import inside a function or under ``if TYPE_CHECKING:`` is lazy and allowed) or
every import ("anywhere").
"""

from __future__ import annotations

import ast
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "obs_sdk"
INTEGRATIONS = ROOT / "integrations"

# The parts, by folder or module of obs_sdk/: a name covers that module, or every module in
# that folder (a folder per part; the CLI package and the public modules are the rest).
SCOPE = ("_scope", "propagation")
HOT_PATH = ("_hotpath",)
DELIVERY = ("_delivery",)
LEDGER = ("_ledger", "_seals")  # the SQL store, and the seals over its committed rows
SHARED = ("_config", "_guard", "_stats", "exceptions", "testing", "__init__")
# The one home of our dependencies' private names (see VENDOR_PRIVATE_HOME below).
SHARED += ("_vendor_private",)
# The core's interface for integrations/ (see INTEGRATION_API below).
SHARED += ("_integration_api",)

# Vendor and framework libraries: optional extras, never pulled in by `import obs_sdk`.
VENDORS = ("posthog", "stripe", "celery", "fastapi", "starlette", "flask", "rich", "click")
VENDORS += ("jinja2", "cryptography", "wrapt", "contextvars_extras")


@dataclass(frozen=True)
class Rule:
    part: str  # who is checked: modules or folders by name in obs_sdk/ ("_scope", "cli._app");
    modules: tuple[str, ...]  # "*": every module outside the CLI, "cli.*": the CLI package's
    forbidden: tuple[str, ...]  # top-level packages or obs_sdk modules (a prefix of a name)
    where: str  # "module" (module level only) or "anywhere"
    why: str


RULES = (
    Rule("scope", SCOPE, tuple(f"obs_sdk.{m}" for m in DELIVERY), "anywhere",
         "the scope is read by every part; it must not know how records leave"),
    Rule("scope", SCOPE, ("sqlalchemy",), "anywhere",
         "a scope holds a session as an opaque object; the ledger is what speaks SQL"),
    Rule("hot path", HOT_PATH, ("sqlalchemy",), "module",
         "the decorated call builds a tuple and queues it; SQL belongs to the workers/commit"),
    Rule("hot path", HOT_PATH, VENDORS, "module",
         "the per-call cost is a budget of tens of ns; vendors live behind sinks"),
    Rule("core", ("*",), VENDORS, "module",
         "`import obs_sdk` must work without any extra installed, and stay light"),
    Rule("core", ("*",), ("obs_sdk.integrations", "obs_sdk.cli"), "anywhere",
         "integrations and the CLI are built on the core, never the other way round"),
    Rule("cli", ("cli.*",), tuple(v for v in VENDORS if v not in ("click", "rich")), "module",
         "the `obs` command needs only its own extra (click, rich), loaded by it alone"),
    Rule("cli", ("cli.*",), ("obs_sdk.integrations",), "anywhere",
         "the CLI reads the ledger through the core, like any app"),
)  # fmt: skip

# A private name of a dependency (opentelemetry._logs, sqlalchemy.x._y) is imported here only,
# with why and a test pinning the versions it was checked against: one place to re-read
# when a dependency changes.
VENDOR_PRIVATE_HOME = "obs_sdk._vendor_private"

# The core's one interface for integrations/: what they need beyond SPEC's names, each name
# documented there (a leading underscore only so that it is not an attribute of the public
# package: see its docstring). Integrations import it freely; no other private name.
INTEGRATION_API = "obs_sdk._integration_api"

# Private names of the core that integrations/ may still use besides it: (file, name) -> why.
# A name is private when a dotted component starts with "_" (obs_sdk._guard, or
# obs_sdk.propagation._keys).
INTEGRATION_ALLOWED = {
    # The core cannot hand the CLI's code on (the core never imports the CLI, RULES above).
    ("viewer.py", "obs_sdk.cli._rows.csv_lines"): "the CLI's CSV export (same columns, same "
    "formula guard): the viewer is a web face of the CLI",
}


def _imports(source: str, module: str) -> list[tuple[str, int, bool]]:
    """(imported dotted name, line, at module level) for each import in *source*.

    ``from a import b`` yields ``a.b`` (b may be a module or a name); relative imports are
    resolved against *module* (a dotted name); ``importlib.import_module("x")`` with a
    literal yields ``x``. Imports under ``if TYPE_CHECKING:`` count as lazy.
    """
    found: list[tuple[str, int, bool]] = []
    package = module.rsplit(".", 1)[0]

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.extend((f"{base}.{alias.name}", node.lineno, top) for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno, top))
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
            isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        )
        for child in ast.iter_child_nodes(node):
            visit(child, top and not lazy)

    visit(ast.parse(source), True)
    return found


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _covers(rule: Rule, name: str) -> bool:
    """True when *rule* checks the module *name* (dotted, e.g. "obs_sdk.cli._app")."""
    key = name.removeprefix("obs_sdk").removeprefix(".") or "__init__"
    in_cli = key == "cli" or key.startswith("cli.")
    if "*" in rule.modules and not in_cli:
        return True
    if "cli.*" in rule.modules and in_cli:
        return True
    return _matches(key, rule.modules)


def rule_breaches(rule: Rule, sources: dict[str, str]) -> list[str]:
    """Each import in *sources* (obs_sdk module name -> source) that *rule* forbids."""
    breaches = []
    for name, source in sorted(sources.items()):
        if not _covers(rule, name):
            continue
        for imported, line, top in _imports(source, name):
            if (top or rule.where == "anywhere") and _matches(imported, rule.forbidden):
                breaches.append(f"{name}:{line} imports {imported} ({rule.part}: {rule.why})")
    return breaches


def private_core_names(source: str, module: str) -> list[tuple[str, int]]:
    """Each private name of the core (outside obs_sdk.integrations) that *source* imports."""
    found = []
    for imported, line, _top in _imports(source, module):
        parts = imported.split(".")
        if parts[0] != "obs_sdk" or imported.startswith("obs_sdk.integrations"):
            continue
        if any(p.startswith("_") and p != "__future__" for p in parts[1:]):
            found.append((imported, line))
    return found


def private_vendor_names(source: str, module: str) -> list[tuple[str, int]]:
    """Each private name of a dependency (not obs_sdk, not the standard library).

    The standard library's private modules ship with the interpreter (``_string`` is how
    ``string.Formatter`` splits a field name; _templates splits them the same way).
    """
    found = []
    for imported, line, _top in _imports(source, module):
        parts = imported.split(".")
        if parts[0] == "obs_sdk" or parts[0] in sys.stdlib_module_names:
            continue
        if any(p.startswith("_") for p in parts):
            found.append((imported, line))
    return found


def _core_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(CORE.rglob("*.py")):
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        sources[dotted.removesuffix(".__init__")] = path.read_text(encoding="utf-8")
    return sources


def test_every_core_module_has_a_part() -> None:
    """A new module of obs_sdk/ is placed in a part here, so the rules cover it."""
    placed = SCOPE + HOT_PATH + DELIVERY + LEDGER + SHARED
    modules = (".".join(p.relative_to(CORE).with_suffix("").parts) for p in CORE.rglob("*.py"))
    unplaced = sorted(m for m in modules if not m.startswith("cli.") and not _matches(m, placed))
    assert not unplaced, f"add these obs_sdk/ modules to a part in {__file__}: {unplaced}"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.part}-{r.forbidden[0]}")
def test_core_rule_holds(rule: Rule) -> None:
    breaches = rule_breaches(rule, _core_sources())
    assert not breaches, "\n".join(breaches)


def test_private_names_of_dependencies_live_in_one_module() -> None:
    sources = _core_sources()
    sources |= {
        f"obs_sdk.integrations.{p.stem}": p.read_text(encoding="utf-8")
        for p in sorted(INTEGRATIONS.glob("*.py"))
    }
    breaches = [
        f"{module}:{line} imports {name}"
        for module, source in sorted(sources.items())
        if module != VENDOR_PRIVATE_HOME
        for name, line in private_vendor_names(source, module)
    ]
    assert not breaches, (
        f"use the library's public API, or move the use to {VENDOR_PRIVATE_HOME} (with why "
        "and a version pin in tests/unit/test_vendor_private.py):\n" + "\n".join(breaches)
    )


def test_integrations_use_no_private_core_name_beyond_the_allow_list() -> None:
    used = set()
    breaches = []
    for path in sorted(INTEGRATIONS.glob("*.py")):
        module = f"obs_sdk.integrations.{path.stem}"
        for name, line in private_core_names(path.read_text(encoding="utf-8"), module):
            if _matches(name, (INTEGRATION_API,)):
                continue
            used.add((path.name, name))
            if (path.name, name) not in INTEGRATION_ALLOWED:
                breaches.append(f"integrations/{path.name}:{line} imports {name}")
    assert not breaches, (
        f"use obs_sdk's public names, or give the need a documented home in {INTEGRATION_API}:\n"
        + "\n".join(breaches)
    )
    stale = sorted(set(INTEGRATION_ALLOWED) - used)
    assert not stale, f"remove these allow-list entries, no longer used: {stale}"


class TestTheChecker:
    """The checker itself, on small synthetic modules: each rule can fail."""

    SOURCE = textwrap.dedent(
        """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        import sqlalchemy.orm
        from obs_sdk import _dispatch
        from . import _sinks
        if TYPE_CHECKING:
            import posthog
        def lazy():
            import rich
            from obs_sdk._guard import guard
            return importlib.import_module("obs_sdk._leaf")
        """
    )

    def test_module_level_imports_are_told_from_lazy_ones(self) -> None:
        found = {(name, top) for name, _line, top in _imports(self.SOURCE, "obs_sdk._x")}
        assert found == {
            ("__future__.annotations", True),
            ("typing.TYPE_CHECKING", True),
            ("sqlalchemy.orm", True),
            ("obs_sdk._dispatch", True),
            ("obs_sdk._sinks", True),
            ("posthog", False),
            ("rich", False),
            ("obs_sdk._guard.guard", False),
            ("obs_sdk._leaf", False),
        }

    def test_a_forbidden_module_level_import_is_a_breach(self) -> None:
        rule = Rule("hot path", ("_x",), ("sqlalchemy",), "module", "why")
        (breach,) = rule_breaches(rule, {"obs_sdk._x": self.SOURCE})
        assert breach.startswith("obs_sdk._x:4 imports sqlalchemy.orm (hot path: why)")

    def test_a_lazy_import_breaks_only_an_anywhere_rule(self) -> None:
        module = Rule("core", ("*",), ("rich", "posthog"), "module", "why")
        anywhere = Rule("scope", ("_x",), ("rich", "posthog"), "anywhere", "why")
        assert rule_breaches(module, {"obs_sdk._x": self.SOURCE}) == []
        assert len(rule_breaches(anywhere, {"obs_sdk._x": self.SOURCE})) == 2

    def test_relative_and_named_imports_of_delivery_are_breaches(self) -> None:
        rule = Rule("scope", ("_x",), ("obs_sdk._dispatch", "obs_sdk._sinks"), "anywhere", "")
        assert len(rule_breaches(rule, {"obs_sdk._x": self.SOURCE})) == 2

    def test_a_module_outside_the_rule_is_not_checked(self) -> None:
        rule = Rule("hot path", ("_y",), ("sqlalchemy",), "module", "why")
        assert rule_breaches(rule, {"obs_sdk._x": self.SOURCE}) == []

    def test_star_is_the_top_level_modules_and_cli_star_the_cli_package(self) -> None:
        core = Rule("core", ("*",), ("sqlalchemy",), "module", "why")
        cli = Rule("cli", ("cli.*",), ("sqlalchemy",), "module", "why")
        sources = {"obs_sdk": self.SOURCE, "obs_sdk._x": self.SOURCE}
        sources |= {"obs_sdk.cli": self.SOURCE, "obs_sdk.cli._app": self.SOURCE}
        checked = [b.split(":")[0] for b in rule_breaches(core, sources)]
        assert checked == ["obs_sdk", "obs_sdk._x"]
        checked = [b.split(":")[0] for b in rule_breaches(cli, sources)]
        assert checked == ["obs_sdk.cli", "obs_sdk.cli._app"]

    def test_private_names_of_dependencies_are_found(self) -> None:
        source = textwrap.dedent(
            """
            from __future__ import annotations
            from opentelemetry import _logs, trace
            from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach
            import sqlalchemy.orm
            from obs_sdk import _config
            from _string import formatter_field_name_split
            """
        )
        found = [name for name, _line in private_vendor_names(source, "obs_sdk._x")]
        assert found == [
            "opentelemetry._logs",
            "opentelemetry.context._SUPPRESS_INSTRUMENTATION_KEY",
        ]

    def test_private_core_names_are_found_and_public_ones_pass(self) -> None:
        source = textwrap.dedent(
            """
            import obs_sdk as obs
            from obs_sdk import Actor, _config
            from obs_sdk.propagation import extract, _keys
            from obs_sdk.integrations._http import checked_actor
            from ._http import checked_actor
            def later():
                return importlib.import_module("obs_sdk._leaf")
            """
        )
        found = [name for name, _line in private_core_names(source, "obs_sdk.integrations.x")]
        assert found == ["obs_sdk._config", "obs_sdk.propagation._keys", "obs_sdk._leaf"]
