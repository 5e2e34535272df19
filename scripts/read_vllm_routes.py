"""Write animllm_cli/engine/vllm_routes.json: the HTTP routes each vLLM release's
OpenAI-compatible server serves, read from that release's own source without importing it.

For each release in vllm_releases.json, the release's `vllm/` sources are fetched as
scripts/read_vllm_releases.py does (the same cache), and every module under
vllm/entrypoints/ is read with `ast`: the routes put on a router or on the app
(`@router.post(...)`, `router.add_api_route(...)`, `app.include_router(...)`, ...), the
calls between functions, and the `if` tests around each. From the server's `build_app`, a
route is served when some chain of calls reaches the line that registers it (or includes
its router); the tests on that chain say when: the model tasks that gate it
(`"generate" in supported_tasks`, vLLM 0.16 on) and any other condition (a flag, a
variable), kept as source text.

  .venv/bin/python scripts/read_vllm_routes.py                       # every release in the table
  .venv/bin/python scripts/read_vllm_routes.py --releases 0.10.0,0.33.0 --out /tmp/r.json

Why static: importing a release needs its dependencies (read_vllm_releases.py stands
packages in for that); the route table needs none of them, and the registrations are
plain calls the source shows. What the reading cannot see (a path that is not a
literal, a router it cannot follow) is listed under "unread" in the file, per release.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

import read_vllm_releases as sources

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "animllm_cli" / "engine" / "vllm_routes.json"
RELEASES = ROOT / "animllm_cli" / "engine" / "vllm_releases.json"
DEMO_SERVER = "vllm.entrypoints.api_server"   # the old example server, not the OpenAI one
HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}
ADD_ROUTE = {"add_api_route", "add_route", "add_websocket_route", "add_api_websocket_route"}
BODY_METHODS = ("POST", "PUT", "PATCH")
NOT_BODY = {"Request", "Response", "WebSocket", "BackgroundTasks", "HTTPConnection"}
SCALARS = {"str", "int", "float", "bool", "bytes", "None", "Literal"}
PARAM_SOURCES = {"Query", "Header", "Path", "Cookie", "Depends", "Security"}
READS = {"json": "json", "form": "multipart", "body": "raw", "stream": "raw"}
APP = ("app",)
TRUE = frozenset({frozenset()})        # a condition in disjunctive form: one empty conjunction


@dataclass
class Module:
    """One parsed module: what its top level defines and imports, for following names."""
    name: str
    path: Path
    tree: ast.Module
    package: str
    defs: dict[str, ast.AST] = field(default_factory=dict)        # top-level def / class
    assigns: dict[str, ast.expr] = field(default_factory=dict)    # top-level NAME = value
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)


@dataclass
class Scope:
    """A top-level function (or a module's own body): where registrations and calls happen."""
    module: Module
    node: ast.AST | None                     # None: the module body
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    assigns: dict[str, list[ast.expr]] = field(default_factory=dict)
    params: dict[str, ast.arg] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.module.name, self.node.name if self.node else "<module>"


@dataclass
class Event:
    """A line that puts a route on a router, includes a router, or calls a function."""
    kind: str                 # route | include | call
    scope: Scope
    conds: tuple[ast.expr, ...]
    node: ast.Call
    target: ast.expr | None = None           # the router/app, or the function called
    path: ast.expr | None = None             # route path, or include prefix
    methods: tuple[str, ...] = ()
    handler: ast.AST | None = None           # a def, or the expression naming it; the router included
    bound: tuple | None = None               # include: the function whose parameter `handler` names
    on: tuple | None = None                  # route, include: the router or app it is put on


class Source:
    """One release's `vllm/` tree, parsed on demand."""

    def __init__(self, tree: Path) -> None:
        self.root = tree
        self.files = {self._name(p): p for p in (tree / "vllm").rglob("*.py")}
        self._parsed: dict[str, Module | None] = {}

    def _name(self, path: Path) -> str:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def module(self, name: str) -> Module | None:
        if name not in self._parsed:
            self._parsed[name] = self._parse(name) if name in self.files else None
        return self._parsed[name]

    def _parse(self, name: str) -> Module:
        path = self.files[name]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        module = Module(name, path, tree, package)
        for stmt in _statements(tree.body):
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                module.defs[stmt.name] = stmt
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                module.assigns[stmt.targets[0].id] = stmt.value
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
                module.assigns[stmt.target.id] = stmt.value
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                module.imports.update(self.imports(stmt, package))
        return module

    def imports(self, stmt: ast.Import | ast.ImportFrom, package: str) -> dict[str, tuple[str, str | None]]:
        """alias -> (module, None) for a module, (module, name) for a name in one."""
        if isinstance(stmt, ast.Import):
            return {a.asname or a.name.split(".")[0]: (a.name if a.asname else a.name.split(".")[0], None)
                    for a in stmt.names}
        base = package.split(".")
        base = base[:len(base) - stmt.level + 1] if stmt.level else []
        source = ".".join(base + ([stmt.module] if stmt.module else []))
        found = {}
        for alias in stmt.names:
            submodule = f"{source}.{alias.name}"
            found[alias.asname or alias.name] = (submodule, None) if submodule in self.files else (source, alias.name)
        return found

    def symbol(self, module: str, name: str, depth: int = 0) -> tuple[Module, str] | None:
        """Where `name`, as `module` has it, is defined (following re-exports)."""
        found = self.module(module)
        if found is None or depth > 8:
            return None
        if name in found.defs or name in found.assigns:
            return found, name
        if name in found.imports:
            source, inner = found.imports[name]
            return self.symbol(source, inner, depth + 1) if inner else None
        return None

    def strings(self, module: Module, expr: ast.expr, depth: int = 0) -> list[str] | None:
        """The strings a constant spells: a tuple of them, a Literal[...], get_args() of one."""
        if depth > 8:
            return None
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return [expr.value]
        if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
            parts = [self.strings(module, e, depth + 1) for e in expr.elts]
            return None if None in parts else [s for p in parts for s in p]
        if isinstance(expr, ast.Subscript) and _text(expr.value).endswith("Literal"):
            return self.strings(module, expr.slice, depth + 1)
        if isinstance(expr, ast.Call) and _text(expr.func).endswith("get_args") and expr.args:
            return self.strings(module, expr.args[0], depth + 1)
        if isinstance(expr, ast.Name):
            where = self.symbol(module.name, expr.id)
            if where and expr.id in where[0].assigns:
                return self.strings(where[0], where[0].assigns[expr.id], depth + 1)
        return None


def _statements(body: list[ast.stmt]):
    """The statements of a block and of the blocks nested in it, short of defs and classes."""
    for stmt in body:
        yield stmt
        if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for name in ("body", "orelse", "finalbody", "handlers"):
                yield from _statements(getattr(stmt, name, []) or [])


def _text(node: ast.AST) -> str:
    return ast.unparse(node)


def _terminates(block: list[ast.stmt]) -> bool:
    if not block:
        return False
    last = block[-1]
    if isinstance(last, (ast.Return, ast.Raise)):
        return True
    return isinstance(last, ast.If) and _terminates(last.body) and _terminates(last.orelse)


def _flat(test: ast.expr) -> ast.expr:
    """(a or b) or c as a or b or c."""
    if not isinstance(test, ast.BoolOp):
        return test
    values = [_flat(v) for v in test.values]
    return ast.BoolOp(test.op, [w for v in values for w in (v.values if isinstance(v, ast.BoolOp) and
                                                              type(v.op) is type(test.op) else [v])])


def _negate(test: ast.expr) -> ast.expr:
    flips = {ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
             ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return test.operand
    if isinstance(test, ast.BoolOp):             # not (a or b): not a and not b
        other = ast.And() if isinstance(test.op, ast.Or) else ast.Or()
        return _flat(ast.BoolOp(other, [_negate(v) for v in test.values]))
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in flips:
        return ast.Compare(test.left, [flips[type(test.ops[0])]()], test.comparators)
    return ast.UnaryOp(ast.Not(), test)


class Reader:
    """The routes one release's `build_app` serves."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.events: list[Event] = []
        self.unread: set[str] = set()
        self.scopes: dict[tuple[str, str], Scope] = {}
        self.tasks: dict[str, frozenset | None] = {}     # a test's text -> the tasks it is true for
        for name in sorted(source.files):
            if name.startswith("vllm.entrypoints.") and name != DEMO_SERVER and ".tests" not in name:
                self._read_module(source.module(name))

    # -- reading the source into events --

    def _read_module(self, module: Module) -> None:
        top = Scope(module, None, imports=module.imports)
        self.scopes[top.key] = top
        self._block(top, module.tree.body, ())
        for node in module.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scope = Scope(module, node, params={a.arg: a for a in
                                                    node.args.posonlyargs + node.args.args + node.args.kwonlyargs})
                for stmt in _statements(node.body):
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        scope.imports.update(self.source.imports(stmt, module.package))
                    elif isinstance(stmt, ast.Assign) and [type(t) for t in stmt.targets] == [ast.Name]:
                        scope.assigns.setdefault(stmt.targets[0].id, []).append(stmt.value)
                self.scopes[scope.key] = scope
                self._block(scope, node.body, ())

    def _block(self, scope: Scope, body: list[ast.stmt], conds: tuple) -> None:
        for stmt in body:
            if isinstance(stmt, ast.If):
                self._exprs(scope, stmt.test, conds)
                self._block(scope, stmt.body, conds + (stmt.test,))
                self._block(scope, stmt.orelse, conds + (_negate(stmt.test),))
                if _terminates(stmt.body) and not _terminates(stmt.orelse):
                    conds += (_negate(stmt.test),)
                elif stmt.orelse and _terminates(stmt.orelse):
                    conds += (stmt.test,)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for decorator in stmt.decorator_list:     # run where the def is; the body, when called
                    self._exprs(scope, decorator, conds, handler=stmt)
            elif isinstance(stmt, ast.ClassDef):
                continue
            else:
                for name, value in ast.iter_fields(stmt):
                    if name in ("body", "orelse", "finalbody", "handlers"):
                        self._block(scope, value, conds)
                    elif isinstance(value, ast.AST):
                        self._exprs(scope, value, conds)
                    elif isinstance(value, list):
                        for item in value:
                            if isinstance(item, ast.AST) and not isinstance(item, ast.stmt):
                                self._exprs(scope, item, conds)

    def _exprs(self, scope: Scope, node: ast.AST, conds: tuple, handler: ast.AST | None = None) -> None:
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            self._call(scope, call, conds, handler if call is node else None)

    def _call(self, scope: Scope, call: ast.Call, conds: tuple, handler: ast.AST | None) -> None:
        func, kw = call.func, {k.arg: k.value for k in call.keywords}
        inner = func.func if isinstance(func, ast.Call) else func     # router.post("/x")(handler)
        if isinstance(func, ast.Call) and call.args and handler is None:
            handler = call.args[0]
            call = func
            kw = {k.arg: k.value for k in call.keywords}
        if not isinstance(inner, ast.Attribute):
            self.events.append(Event("call", scope, conds, call, target=func))
            return
        attr = inner.attr
        if attr in HTTP_METHODS or attr in ("api_route", "websocket", "api_websocket_route"):
            if handler is None:             # a method of something else, or a decorator not yet applied
                return
            methods = (attr.upper(),) if attr in HTTP_METHODS else ("WEBSOCKET",) if "websocket" in attr \
                else self._methods(kw.get("methods"), scope)
            path = call.args[0] if call.args else kw.get("path")
            self.events.append(Event("route", scope, conds, call, inner.value, path, methods, handler))
        elif attr in ADD_ROUTE:
            path = call.args[0] if call.args else kw.get("path")
            endpoint = call.args[1] if len(call.args) > 1 else kw.get("endpoint", kw.get("route"))
            methods = ("WEBSOCKET",) if "websocket" in attr else self._methods(kw.get("methods"), scope)
            self.events.append(Event("route", scope, conds, call, inner.value, path, methods, endpoint))
        elif attr == "include_router" and call.args:
            self.events.append(Event("include", scope, conds, call, inner.value, kw.get("prefix"),
                                     handler=call.args[0]))
        elif attr == "expose" and call.args:       # prometheus-fastapi-instrumentator: GET /metrics
            self.events.append(Event("route", scope, conds, call, call.args[0],
                                     kw.get("endpoint", ast.Constant("/metrics")), ("GET",)))
        elif attr == "mount" and isinstance(inner.value, ast.Name) and inner.value.id == "app":
            self._unread(scope, call, "a mount (static files or a sub-application), not a route")
        else:
            self.events.append(Event("call", scope, conds, call, target=func))

    def _methods(self, node: ast.expr | None, scope: Scope) -> tuple[str, ...]:
        """The methods= of a route; () where they are not written out."""
        if node is None:
            return ("GET",)
        return tuple(sorted({m.upper() for m in self.source.strings(scope.module, node) or ()}))

    def _unread(self, scope: Scope, node: ast.AST, why: str) -> None:
        where = f"{scope.module.path.relative_to(self.source.root)}:{scope.key[1]}"
        self.unread.add(f"{where}: {_text(node)[:160]} ({why})")

    # -- resolving names --

    def _where(self, scope: Scope, name: str) -> tuple[str, str | None] | None:
        """What a name in a scope imports, as (module, name) or (module, None)."""
        for imports in (scope.imports, scope.module.imports):
            if name in imports:
                return imports[name]
        return None

    def function(self, scope: Scope, expr: ast.expr) -> Scope | None:
        if isinstance(expr, ast.Name):
            if expr.id in scope.module.defs and expr.id not in scope.imports:
                return self.scopes.get((scope.module.name, expr.id))
            where = self._where(scope, expr.id)
            if where and where[1]:
                found = self.source.symbol(*where)
                return self.scopes.get((found[0].name, found[1])) if found else None
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            where = self._where(scope, expr.value.id)
            if where and where[1] is None:
                found = self.source.symbol(where[0], expr.attr)
                return self.scopes.get((found[0].name, found[1])) if found else None
        return None

    def holder(self, scope: Scope, expr: ast.expr) -> tuple | None:
        """The router or app an expression names: APP, ("global", module, name),
        ("local", scope key, name) or ("param", scope key, name)."""
        if not isinstance(expr, ast.Name):
            return None
        name = expr.id
        if name in scope.assigns and any(self._makes_router(v) for v in scope.assigns[name]):
            makes_app = any(_text(v.func).endswith("FastAPI") for v in scope.assigns[name] if isinstance(v, ast.Call))
            return APP if makes_app and scope.key[1] == "build_app" else ("local", scope.key, name)
        if name == "app":
            return APP
        if name in scope.params:
            annotation = scope.params[name].annotation
            return APP if annotation is not None and "FastAPI" in _text(annotation) else ("param", scope.key, name)
        found = self.source.symbol(scope.module.name, name) if name not in scope.imports else \
            self.source.symbol(*scope.imports[name]) if scope.imports[name][1] else None
        if found and self._makes_router(found[0].assigns.get(found[1])):
            return "global", found[0].name, found[1]
        return None

    @staticmethod
    def _makes_router(value: ast.expr | None) -> bool:
        return isinstance(value, ast.Call) and _text(value.func).split(".")[-1] in ("APIRouter", "FastAPI")

    def prefix(self, holder: tuple) -> str:
        """The prefix an APIRouter(prefix=...) puts before its routes."""
        if holder[0] == "global":
            value = self.source.module(holder[1]).assigns[holder[2]]
            module = self.source.module(holder[1])
        elif holder[0] == "local":
            scope = self.scopes[holder[1]]
            value, module = next(v for v in scope.assigns[holder[2]] if self._makes_router(v)), scope.module
        else:
            return ""
        prefix = next((k.value for k in value.keywords if k.arg == "prefix"), None)
        return self.literal(module, prefix) or "" if prefix is not None else ""

    def literal(self, module: Module, expr: ast.expr | None) -> str | None:
        found = self.source.strings(module, expr) if expr is not None else None
        if found and len(found) == 1:
            return found[0]
        if isinstance(expr, ast.JoinedStr):
            parts = [self.literal(module, v.value if isinstance(v, ast.FormattedValue) else v) for v in expr.values]
            return None if None in parts else "".join(parts)
        return None

    # -- conditions --

    def conjunction(self, scope: Scope, conds: tuple) -> frozenset:
        """The tests on a line, each as its source text (local names written out)."""
        facts = []
        for test in conds:
            test = self._expand(scope, test)
            parts = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]
            for part in parts:
                text = _text(part)
                self.tasks.setdefault(text, self._tasks(scope.module, part))
                facts.append(text)
        return frozenset(facts)

    def _expand(self, scope: Scope, test: ast.expr, depth: int = 0) -> ast.expr:
        """The test with a local name assigned once (`enabled = envs.X or ...`) replaced by
        what it was assigned; not task names, nor `args = getattr(...)`."""
        if depth > 4 or scope.node is None:
            return test

        class Expand(ast.NodeTransformer):
            def visit_Name(inner, node: ast.Name) -> ast.expr:
                values = scope.assigns.get(node.id, [])
                if len(values) != 1 or "task" in node.id or node.id in scope.params or \
                        (isinstance(values[0], ast.Call) and _text(values[0].func) == "getattr"):
                    return node
                return self._expand(scope, copy.deepcopy(values[0]), depth + 1)

        expanded = _flat(Expand().visit(copy.deepcopy(test)))
        if isinstance(expanded, ast.UnaryOp) and isinstance(expanded.op, ast.Not):
            return _negate(expanded.operand)
        return expanded

    def _tasks(self, module: Module, test: ast.expr) -> frozenset | None:
        """The model tasks a test is true for, where it plainly tests the supported tasks."""
        if isinstance(test, ast.BoolOp):
            parts = [self._tasks(module, v) for v in test.values]
            if None in parts:
                return None
            return frozenset().union(*parts) if isinstance(test.op, ast.Or) else frozenset.intersection(*parts)
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, op, right = test.left, test.ops[0], test.comparators[0]
            if isinstance(op, ast.In) and "task" in _text(right):
                found = self.source.strings(module, left)
                return frozenset(found) if found else None
            if isinstance(op, (ast.In, ast.Eq)) and "task" in _text(left):
                found = self.source.strings(module, right)
                return frozenset(found) if found else None
        if isinstance(test, ast.Call) and _text(test.func) == "any" and test.args and \
                isinstance(test.args[0], ast.GeneratorExp):
            generator = test.args[0]
            loop, test = generator.generators, generator.elt
            if len(loop) == 1 and isinstance(test, ast.Compare) and isinstance(test.ops[0], ast.In):
                if "task" in _text(loop[0].iter):          # any(t in POOLING_TASKS for t in supported_tasks)
                    found = self.source.strings(module, test.comparators[0])
                elif "task" in _text(test.comparators[0]):  # any(t in supported_tasks for t in ("embed", ...))
                    found = self.source.strings(module, loop[0].iter)
                else:
                    found = None
                return frozenset(found) if found else None
        return None

    # -- following the calls from build_app --

    def routes(self) -> dict[str, dict]:
        roots = [s for s in self.scopes.values() if s.key[1] == "build_app"]
        if len(roots) != 1:
            raise RuntimeError(f"expected one build_app, found {[s.key for s in roots]}")
        self.root = roots[0]
        self._reach: dict = {}
        self._held: dict = {}
        self.calls: dict[tuple, list[Event]] = {}
        for event in list(self.events):
            if event.kind == "call" and (callee := self.function(event.scope, event.target)):
                self.calls.setdefault(callee.key, []).append(event)
                self._bind(event, callee)
        for event in self.events:
            if event.kind != "call":
                event.on = self.holder(event.scope, event.target)
        self.servers, waiting = {self.root.key}, [self.root.key]
        while waiting:
            for call in self.calls.get(waiting.pop(), ()):
                if call.scope.node is not None and call.scope.key not in self.servers:
                    self.servers.add(call.scope.key)
                    waiting.append(call.scope.key)
        found: dict[str, dict] = {}
        for path, methods, handler, condition in self.held(APP):
            route = found.setdefault(path, {"methods": set(), "body": "none", "request": None, "when": frozenset()})
            route["methods"].update(methods)
            route["when"] = _minimal(route["when"] | condition)
            if handler and set(methods) & set(BODY_METHODS):
                route["body"], route["request"] = handler
        return {path: self._fact(route) for path, route in sorted(found.items())}

    def _bind(self, call: Event, callee: Scope) -> None:
        """A router passed to a function that puts routes on its parameter: those routes are
        the router's (an include from the caller's side)."""
        node = callee.node
        params = [a.arg for a in node.args.posonlyargs + node.args.args]
        given = list(zip(params, call.node.args)) + [(k.arg, k.value) for k in call.node.keywords if k.arg]
        for param, arg in given:
            outer = self.holder(call.scope, arg)
            if outer and outer != APP and param != "app":
                self.events.append(Event("include", call.scope, call.conds, call.node, arg, None,
                                         handler=ast.Name(param), bound=callee.key))

    def reach(self, scope: Scope) -> frozenset:
        """When a scope runs, from build_app or a function that runs it (what that does first,
        such as registering a route on a router build_app includes, counts as well): in
        disjunctive form, each conjunction a set of tests."""
        if scope.node is None or scope.key in self.servers:
            return TRUE
        if scope.key not in self._reach:
            self._reach[scope.key] = frozenset()          # a cycle reaches nothing new
            self._reach[scope.key] = _minimal(frozenset().union(*(
                _and(self.reach(call.scope), {self.conjunction(call.scope, call.conds)})
                for call in self.calls.get(scope.key, ()))))
        return self._reach[scope.key]

    def held(self, holder: tuple) -> list[tuple]:
        """(path, methods, (body, request) or None, condition) for each route on a router/app."""
        if holder in self._held:
            return self._held[holder]
        self._held[holder] = []
        found = []
        for event in (e for e in self.events if e.on == holder):
            if event.kind == "route":
                path = self.literal(event.scope.module, event.path)
                if path is None or not path.startswith("/") and path != "" or not event.methods:
                    self._unread(event.scope, event.node, "path or methods not written out")
                    continue
                when = _and(self.reach(event.scope), {self.conjunction(event.scope, event.conds)})
                found.append((self.prefix(holder) + path, event.methods, self._body(event), when))
            else:
                child = self._child(event)
                if child is None:
                    self._unread(event.scope, event.node, "a router the reading cannot follow")
                    continue
                prefix = self.literal(event.scope.module, event.path) or ""
                when = _and(self.reach(event.scope), {self.conjunction(event.scope, event.conds)})
                found += [(prefix + p, m, b, _and(w, when)) for p, m, b, w in self.held(child)]
        self._held[holder] = [(p, m, b, w) for p, m, b, w in found if w]
        return self._held[holder]

    def _child(self, event: Event) -> tuple | None:
        if event.bound:
            return "param", event.bound, event.handler.id
        return self.holder(event.scope, event.handler)

    # -- the handler's body --

    def _body(self, event: Event) -> tuple[str, str | None] | None:
        node, module = event.handler, event.scope.module
        if node is not None and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node, module = self._def(event.scope, node)
        if node is None:
            return None
        path = self.literal(event.scope.module, event.path) or ""
        bodies = []
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        defaults = [None] * (len(node.args.posonlyargs + node.args.args) - len(node.args.defaults)) + \
            list(node.args.defaults) + list(node.args.kw_defaults)
        for arg, default in zip(arguments, defaults):
            kind = self._param(module, arg, default, path)
            if kind:
                bodies.append(kind)
        if bodies:
            kinds = {k for k, _ in bodies}
            named = [r for _, r in bodies if r]
            request = named[0] if len(bodies) == len(named) == 1 else None
            return ("multipart" if "multipart" in kinds else "json"), request
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            if isinstance(call.func, ast.Attribute) and call.func.attr in READS and \
                    isinstance(call.func.value, ast.Name) and call.func.value.id in {a.arg for a in arguments}:
                return READS[call.func.attr], None
        return "none", None

    def _def(self, scope: Scope, expr: ast.expr) -> tuple[ast.AST | None, Module]:
        """The handler a route names, and its module: a def in the same function, or a function."""
        if isinstance(expr, ast.Name) and scope.node is not None:
            for stmt in _statements(scope.node.body):
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == expr.id:
                    return stmt, scope.module
        found = self.function(scope, expr)
        return (found.node, found.module) if found else (None, scope.module)

    def _param(self, module: Module, arg: ast.arg, default: ast.expr | None, path: str) -> tuple | None:
        """(body kind, request type) for a parameter FastAPI fills from the request body."""
        if arg.arg in ("self", "cls") or "{" + arg.arg in path or arg.annotation is None:
            return None
        annotation, marks = arg.annotation, []
        if isinstance(default, ast.Call):
            marks.append(_text(default.func).split(".")[-1])
        if isinstance(annotation, ast.Subscript) and _text(annotation.value).endswith("Annotated"):
            items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
            annotation = items[0]
            marks += [_text(m.func).split(".")[-1] for m in items[1:] if isinstance(m, ast.Call)]
        if set(marks) & PARAM_SOURCES:
            return None
        annotation = _unoptional(annotation)
        names = {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(annotation) if isinstance(n, ast.Attribute)}
        # the request class, where the body is one: not a dict, a scalar, nor a field of an object (embed=True)
        model = _text(annotation) if all(n[0].isupper() for n in names - {"Optional", "Union"}) and \
            names.isdisjoint(SCALARS) and "embed=True" not in _text(arg.annotation) else None
        if "Form" in marks or "File" in marks or "UploadFile" in names:
            return "multipart", model
        if "Body" in marks or names - SCALARS - {"Optional", "Union"} and not names & NOT_BODY \
                and not self._enum(module, annotation):
            return "json", model
        return None

    def _enum(self, module: Module, annotation: ast.expr) -> bool:
        """A class FastAPI reads from the query string, not the body: an Enum."""
        if not isinstance(annotation, ast.Name):
            return False
        found = self.source.symbol(module.name, annotation.id)
        node = found[0].defs.get(found[1]) if found else None
        return isinstance(node, ast.ClassDef) and any("Enum" in _text(b) or _text(b) in SCALARS for b in node.bases)

    def _fact(self, route: dict) -> dict:
        """The route as the table keeps it: its tasks and other conditions."""
        conjunctions = route["when"]
        gated = [frozenset.intersection(*tasks) if (tasks := [self.tasks[t] for t in c if self.tasks[t] is not None])
                 else None for c in conjunctions]
        rest = _minimal(frozenset(frozenset(t for t in c if self.tasks[t] is None) for c in conjunctions))
        others = [sorted(c) for c in rest]
        def both(texts: list[str]) -> str:
            joined = " and ".join(f"({t})" if " or " in t and len(texts) > 1 else t for t in texts)
            return f"({joined})" if len(others) > 1 and len(texts) > 1 else joined

        when = " or ".join(both(o) for o in sorted(others)) if all(others) else None
        return {"methods": sorted(route["methods"]), "body": route["body"], "request": route["request"],
                "tasks": None if None in gated else sorted(frozenset().union(*gated)), "when": when}


def _unoptional(annotation: ast.expr) -> ast.expr:
    """X for Optional[X] and X | None."""
    if isinstance(annotation, ast.Subscript) and _text(annotation.value).endswith("Optional"):
        return annotation.slice
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        sides = [s for s in (annotation.left, annotation.right) if _text(s) != "None"]
        if len(sides) == 1:
            return sides[0]
    return annotation


def _and(left: frozenset, right) -> frozenset:
    return _minimal(frozenset(a | b for a in left for b in right))


def _minimal(conjunctions: frozenset) -> frozenset:
    """Drop a conjunction that another one's tests are a part of (it adds nothing)."""
    return frozenset(c for c in conjunctions if not any(o < c for o in conjunctions))


def read_release(tree: Path) -> tuple[dict[str, dict], list[str]]:
    reader = Reader(Source(tree))
    routes = reader.routes()
    return routes, sorted(reader.unread)


def compact(tables: dict[str, tuple[dict, list]]) -> dict:
    """One file for every release: each (path, facts) once, with the runs of releases that serve it."""
    releases = list(tables)
    routes: dict[str, list[int]] = {}
    unread: dict[str, list[int]] = {}
    for index, (found, notes) in enumerate(tables.values()):
        for path, fact in found.items():
            routes.setdefault(json.dumps({"path": path, **fact}), []).append(index)
        for note in notes:
            unread.setdefault(note, []).append(index)
    return {
        "about": "read from each release's own source by scripts/read_vllm_routes.py; do not edit by hand. The "
                 "HTTP routes each release's OpenAI-compatible server (build_app) registers. body (of the POST "
                 "handler): json, multipart (a Form() model), raw (the handler reads the bytes), none; request: "
                 "its request class (null where the handler parses the JSON itself or takes fields of it). "
                 "tasks: the model tasks that gate the route's registration (null: not gated by task); when: any other condition on it (a flag, a variable), "
                 "as source text. Each route lists the runs [first, last] of indices into `releases` that serve "
                 "it; a path whose facts change between releases has one entry per set of facts. unread: "
                 "registrations the reading could not follow.",
        "releases": releases,
        "routes": [{**json.loads(key), "releases": sources.spans(idx)}
                   for key, idx in sorted(routes.items(), key=lambda item: (json.loads(item[0])["path"], item[1]))],
        "unread": {note: sources.spans(idx) for note, idx in sorted(unread.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default=sources.INDEX, help="the package index's JSON for vllm (default: PyPI)")
    parser.add_argument("--releases", help="comma-separated releases (default: those of vllm_releases.json)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    wanted = args.releases.split(",") if args.releases else json.loads(RELEASES.read_text())["releases"]
    cache = Path(platformdirs.user_cache_dir("animllm")) / "vllm-sources"
    cache.mkdir(parents=True, exist_ok=True)
    files = sources.release_files(args.index, sources.FIRST)
    missing = [v for v in wanted if v not in files]
    if missing:
        sys.exit(f"not on the index (or before {sources.FIRST}): {', '.join(missing)}")
    tables = {}
    for version in wanted:
        started = time.monotonic()
        tables[version] = read_release(sources.source_tree(version, files[version], cache))
        print(f"read {version}: {len(tables[version][0])} routes, {len(tables[version][1])} unread "
              f"({time.monotonic() - started:.1f}s)", file=sys.stderr, flush=True)
    args.out.write_text(sources.dump(compact(tables)))
    print(f"wrote {args.out}: {len(tables)} releases", file=sys.stderr)


if __name__ == "__main__":
    main()
