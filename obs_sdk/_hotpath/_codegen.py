"""The one compiler of generated code, and the namespace each piece of it runs in.

Three things are generated: a plan's field resolver (``_resolving``), a plan's renderer
(``_rendering``) and a decorated function's wrapper (``_lane``). Each is Python source
compiled here, in a ``Namespace`` its maker fills: that dict is the code's only global
scope, with empty builtins, so every name the code reads is one its maker put there
(each starts with ``_o_``, so no user name, such as a parameter or a function's name, can
shadow one) and nothing is looked up in a module that another module may rewrite.
"""

from __future__ import annotations

import itertools
import linecache
import weakref
from typing import Any

__all__ = ["Namespace", "compile_function"]

_GENERATED = itertools.count(1)


class Namespace(dict[str, Any]):
    """The names one piece of generated code reads (all ``_o_...``), given explicitly."""

    def const(self, value: Any) -> str:
        """Add *value* under a fresh name and return the name, for the source to read."""
        name = f"_o_c{len(self)}"
        self[name] = value
        return name


def compile_function(source: str, namespace: Namespace, what: str, about: str, name: str) -> Any:
    """Execute *source* in *namespace* and return the function it defines as *name*.

    *namespace* is the generated code's only global scope: builtins are emptied, so a name
    the source reads and its maker did not put in is a NameError when the code runs, never
    a silent lookup elsewhere. The source gets a file name of its own,
    ``<obs_sdk WHAT #N of ABOUT>``, registered in linecache, so a traceback through it shows
    its lines like any module's (the model: attrs' ``_make_method``). Other functions the
    source defines are in ``function.__globals__``.
    """
    filename = f"<obs_sdk {what} #{next(_GENERATED)} of {about}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # A plain dict, not the Namespace: CPython specialises a global read (LOAD_GLOBAL) only
    # when the globals are an exact dict; a subclass made the lane ~1.6 times as slow.
    code_globals = {**namespace, "__builtins__": {}}
    exec(compile(source, filename, "exec"), code_globals)
    function = code_globals[name]
    # The source lives as long as the function: record_audit() and track() make a plan (and
    # its renderer) per call, which must not leave a linecache entry each.
    weakref.finalize(function, linecache.cache.pop, filename, None)
    return function
