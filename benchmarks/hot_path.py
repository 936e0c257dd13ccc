"""Profile the hot path: ``python -m benchmarks.hot_path``.

Two views of ``@audited`` (0 and 2 fields), ``@tracked`` and ``@audited`` inside a
transaction, with records waiting in the intake (router held, as in the overhead table):

1. cProfile, top functions by own time (cProfile inflates Python calls, so read it for
   *where*, not *how much*);
2. the pieces of the path timed one by one (best of many repeats), so their sum can be
   set against the whole call.

This reads obs_sdk internals on purpose: it is a tool for whoever tunes the hot path.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import tempfile
import timeit
from pathlib import Path
from typing import Any

from opentelemetry.context import create_key
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import obs_sdk as obs
from benchmarks import contenders
from benchmarks.contenders import ACTOR, ObsControl, audited_with, f
from obs_sdk._delivery._dispatch import dispatcher
from obs_sdk._hotpath import _emit
from obs_sdk._hotpath._records import SUCCESS, analytics_identity
from obs_sdk._hotpath._runtime import runtime
from obs_sdk._scope import _context
from obs_sdk._scope._context import SCOPE_KEY, SUPPRESS_KEY, current_context

# A key made as OTel makes its span key (private there): a third lookup of the same cost.
SPAN_KEY = create_key("current-span")


def _spec_of(wrapper: Any) -> Any:
    """The Instrumentation of a decorated function: in its generated code's namespace."""
    return wrapper.__globals__["_o_spec"]


def _best_ns(stmt: str, namespace: dict[str, Any], control: ObsControl) -> float:
    timer = timeit.Timer(stmt, globals=namespace)
    best = min(timer.repeat(repeat=25, number=20_000)) / 20_000 * 1e9
    control.discard()
    contenders.clear_floor()
    return best


def _profile(label: str, call: Any, control: ObsControl, calls: int = 100_000) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(calls):
        call(i)
    profiler.disable()
    control.discard()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
    body = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    return f"### {label}\n\n```\n{body}\n```"


def main() -> None:
    control = ObsControl(Path(tempfile.mkdtemp(prefix="obs-profile-")), None)
    audit0, audit2 = audited_with(0)(f), audited_with(2)(f)
    tracked = obs.tracked("item_read", properties={"x": "{x}"})(f)
    floor = contenders.closure_floor(f)
    session = Session(create_engine("sqlite://"))
    print("## cProfile (100,000 calls each, inside a scope; own time first)\n")
    with control.scope():
        for label, call in (
            ("@audited, 0 fields", audit0),
            ("@audited, 2 fields", audit2),
            ("@tracked", tracked),
        ):
            print(_profile(label, call, control), "\n")
        with obs.scope(actor=ACTOR, session=session):
            print(_profile("@audited, 0 fields, in a transaction", audit0, control, 20_000))
        session.rollback()

        ctx = current_context()
        frame = ctx.get(SCOPE_KEY)
        spec0, spec2, spec_t = _spec_of(audit0), _spec_of(audit2), _spec_of(tracked)
        raw = (spec0, SUCCESS, 0, frame.fields, None, (), None, None)  # type: ignore[attr-defined]
        namespace = {
            "f": f,
            "floor": floor,
            "audit0": audit0,
            "audit2": audit2,
            "tracked": tracked,
            "spec0": spec0,
            "spec2": spec2,
            "spec_t": spec_t,
            "raw": raw,
            "ctx": ctx,
            "SUCCESS": SUCCESS,
            "SCOPE_KEY": SCOPE_KEY,
            "SPAN_KEY": SPAN_KEY,
            "SUPPRESS_KEY": SUPPRESS_KEY,
            "ACTOR": ACTOR,
            "current_context": current_context,
            "dispatcher": dispatcher,
            "analytics_identity": analytics_identity,
            "_emit": _emit,
            "runtime": runtime,
            "_context": _context,
        }
        pieces = [
            ("bare f(1)", "f(1)"),
            ("closure floor", "floor(1)"),
            ("@audited, 0 fields", "audit0(1)"),
            ("@audited, 2 fields", "audit2(1)"),
            ("@tracked, 1 property", "tracked(1)"),
            ("emit() alone, 0 fields", "_emit.emit(spec0, SUCCESS, (1,), {}, 1, None)"),
            ("emit() alone, 2 fields", "_emit.emit(spec2, SUCCESS, (1,), {}, 1, None)"),
            ("emit() alone, @tracked", "_emit.emit(spec_t, SUCCESS, (1,), {}, 1, None)"),
            ("Resolver.resolve(), 2 fields", "spec2.resolving.resolve((1,), {}, 1, None)"),
            ("Resolver.resolve(), 1 property", "spec_t.resolving.resolve((1,), {}, 1, None)"),
            ("dispatcher.submit(raw)", "dispatcher.submit(raw)"),
            ("current_context()", "current_context()"),
            ("3 x ctx.get()", "ctx.get(SUPPRESS_KEY); ctx.get(SCOPE_KEY); ctx.get(SPAN_KEY)"),
            ("clock()", "runtime.clock()"),
            ("8-tuple of locals", "(spec0, SUCCESS, 0, raw, None, (), None, None)"),
            ("analytics_identity()", "analytics_identity(spec_t, ACTOR)"),
        ]
        print("\n## The pieces, timed alone (best of 25 x 20,000, ns)\n")
        print("| piece | ns |\n| --- | ---: |")
        for label, stmt in pieces:
            print(f"| {label} | {_best_ns(stmt, namespace, control):,.0f} |")
    session.close()
    control.close()


if __name__ == "__main__":
    main()
