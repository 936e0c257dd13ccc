"""instrument() and uninstrument(): decorate a function without editing its module.

``obs.instrument("myapp.billing:refund", obs.audited("payment.refunded"))`` replaces
``refund`` on its module with ``obs.audited(...)(refund)``: at once when the module is
imported, otherwise when it is (a wrapt post-import hook). ``uninstrument`` puts the
original back.

The decorator receives the function as defined, never a proxy, so ``@audited`` checks
its templates against the real signature (``self`` and ``cls`` included for methods),
and the attribute is replaced by exactly what the decorator returned, wrapped again in
``classmethod`` / ``staticmethod`` when the original was one. That is what decorating the
source would have produced, so methods bind as they always did. wrapt's
``wrap_function_wrapper`` (what OpenTelemetry's instrumentations use) would instead put a
``FunctionWrapper`` proxy in front: the decorator would then have to be applied to the
unbound function inside it anyway, and every call would pay for both layers. wrapt does
the two parts it is best at here: finding the attribute as stored, without binding it
(``resolve_path`` walks a class's MRO and reads ``__dict__``), and running code when a
module is imported (``register_post_import_hook``). It is imported only when
``instrument()`` is first called, so ``import obs_sdk`` costs nothing for it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from obs_sdk.exceptions import ConfigurationError

__all__ = ["instrument", "uninstrument"]

logger = logging.getLogger("obs_sdk")

_NAME = r"[^\W\d]\w*"
_TARGET_RE = re.compile(rf"({_NAME}(?:\.{_NAME})*):({_NAME}(?:\.{_NAME})*)")
_FORM = "'package.module:function' or 'package.module:Class.method'"

_lock = threading.RLock()
_patches: dict[str, _Patch] = {}  # by target: applied, or waiting for its module
_hooked: set[str] = set()  # modules with a post-import hook registered and not yet fired


class _Patch:
    """One instrumented target: what was there, what replaced it, and where."""

    __slots__ = (
        "attribute",
        "created",
        "decorator",
        "module",
        "original",
        "owner",
        "path",
        "replacement",
    )

    def __init__(self, module: str, path: str, decorator: Callable[[Any], Any]) -> None:
        self.module = module
        self.path = path
        self.decorator = decorator
        self.owner: Any = None  # the module or class the attribute was set on, once applied
        self.attribute = path.rpartition(".")[2]
        self.original: Any = None
        self.replacement: Any = None
        self.created = False  # the attribute was inherited: restoring deletes it again

    @property
    def target(self) -> str:
        return f"{self.module}:{self.path}"

    @property
    def applied(self) -> bool:
        return self.owner is not None


def _parse(target: object) -> tuple[str, str]:
    """Split *target* into (module, attribute path), or explain the expected form."""
    if not isinstance(target, str):
        raise ConfigurationError(f"instrument() takes a target string {_FORM}, got {target!r}")
    match = _TARGET_RE.fullmatch(target)
    if match is None:
        raise ConfigurationError(
            f"instrument() target {target!r} is not of the form {_FORM} "
            "(the module path, a colon, then the attribute path)"
        )
    return match.group(1), match.group(2)


def instrument(target: str, decorator: Callable[[Any], Any]) -> None:
    """Apply *decorator* to the function or method *target* names, without editing its code.

    *target* is ``"package.module:function"`` or ``"package.module:Class.method"``
    (nested classes too: ``"mod:Outer.Inner.method"``). When the module is already
    imported the attribute is replaced at once, by exactly ``decorator(original)``;
    otherwise that happens when the module is imported. Instance, class and static
    methods keep binding: the decorator is given the function as defined (unwrapped
    from its ``classmethod`` / ``staticmethod``, which is put back around the result),
    so ``@audited`` templates are checked against the real signature, ``self`` and
    ``cls`` included. A method the class inherits is set on the class named, shadowing
    the base class's for that class and its subclasses only.

    One instrumentation per target: calling ``instrument`` again for the same target
    replaces the previous decorator (the new one wraps the original, never the previous
    wrapper), so a call is never recorded twice however often this runs.

    Only lookups made after the replacement see it: code that ran ``from myapp.billing
    import refund`` before keeps the original function. Instrument early, before the
    application imports the module (for instance first thing in its entry point), and
    the question never arises. Thread-safe.

    Raises:
        ConfigurationError: *target* is not of the form above, *decorator* is not
            callable, or (module already imported) the attribute does not exist, is not
            a function or method, cannot be set, or the decorator refused it (an
            ``@audited`` template naming a missing parameter). When the module is
            imported later these are logged as errors on the ``obs_sdk`` logger
            instead: an import hook cannot raise into the code that imports.
    """
    module_name, path = _parse(target)
    if not callable(decorator):
        raise ConfigurationError(
            f"instrument({target!r}, ...) takes a decorator such as "
            f"obs.audited('payment.refunded'), got {decorator!r}"
        )
    patch = _Patch(module_name, path, decorator)
    with _lock:
        previous = _patches.get(patch.target)
        module = sys.modules.get(module_name)
        if module is not None:
            if previous is not None and previous.applied:
                _restore(previous)
            try:
                _apply(patch, module)  # raises: the caller learns at once
            except Exception:
                _reapply(previous, module)  # a failed replacement leaves things as they were
                raise
            _patches[patch.target] = patch
            return
        if previous is not None and previous.applied:
            _restore(previous)
        _patches[patch.target] = patch
        if module_name not in _hooked:
            _hooked.add(module_name)
            import wrapt

            wrapt.register_post_import_hook(_on_import, module_name)


def uninstrument(target: str) -> bool:
    """Undo ``instrument(target, ...)``: put the original function or method back.

    Returns True when there was an instrumentation to remove (applied, or waiting for
    its module to be imported), False otherwise. When something else replaced the
    attribute meanwhile, that replacement is left in place and a warning says so.
    Thread-safe.

    Raises:
        ConfigurationError: *target* is not of the form ``instrument`` takes.
    """
    module_name, path = _parse(target)
    with _lock:
        patch = _patches.pop(f"{module_name}:{path}", None)
        if patch is None:
            return False
        if patch.applied:
            _restore(patch)
        return True


def _on_import(module: ModuleType) -> None:
    """The post-import hook: apply what waits for *module*. Never raises into the import."""
    name = module.__name__
    with _lock:
        _hooked.discard(name)
        waiting = [p for p in _patches.values() if p.module == name and not p.applied]
        for patch in waiting:
            try:
                _apply(patch, module)
            except Exception as exc:
                # The importer must not fail for our sake: say so loudly and forget it. A
                # ConfigurationError is its own diagnosis; anything else gets its traceback.
                del _patches[patch.target]
                logger.error(  # noqa: TRY400
                    "obs_sdk: obs.instrument(%r) was not applied when %s was imported: %s",
                    patch.target,
                    name,
                    exc,
                    exc_info=None if isinstance(exc, ConfigurationError) else exc,
                )


def _reapply(previous: _Patch | None, module: ModuleType) -> None:
    """Put *previous* back after a replacement failed; forget it if that fails too."""
    if previous is None or previous.owner is not None:
        return
    try:
        _apply(previous, module)
    except Exception:
        _patches.pop(previous.target, None)


def _apply(patch: _Patch, module: ModuleType) -> None:
    """Replace the attribute *patch* names on *module* by the decorated original.

    Raises:
        ConfigurationError: the attribute is missing, not a function, or cannot be set;
            or the decorator raised it (a template that does not fit the signature).
    """
    import wrapt

    try:
        owner, attribute, original = wrapt.resolve_path(module, patch.path)
    except AttributeError:
        raise ConfigurationError(
            f"instrument({patch.target!r}): module {patch.module!r} has no "
            f"{patch.path!r}; name a function or a method of a class defined in it"
        ) from None
    if not isinstance(owner, (type, ModuleType)):
        raise ConfigurationError(
            f"instrument({patch.target!r}): {patch.path.rpartition('.')[0]!r} is a "
            f"{type(owner).__name__} instance; name a function, or a method of a class"
        )
    wrapper: Callable[[Any], Any] | None = None
    function: Any = original
    if isinstance(original, (classmethod, staticmethod)):
        wrapper, function = type(original), original.__func__
    if isinstance(function, type):
        raise ConfigurationError(
            f"instrument({patch.target!r}) names a class; name one of its methods, "
            f"e.g. '{patch.target}.method'"
        )
    if not callable(function):
        raise ConfigurationError(
            f"instrument({patch.target!r}) names a {type(original).__name__}, "
            "not a function or method"
        )
    decorated = patch.decorator(function)
    if not callable(decorated):
        raise ConfigurationError(
            f"instrument({patch.target!r}): the decorator returned {decorated!r}, not a function"
        )
    replacement = wrapper(decorated) if wrapper is not None else decorated
    created = attribute not in vars(owner)
    try:
        setattr(owner, attribute, replacement)
    except (AttributeError, TypeError) as exc:
        raise ConfigurationError(
            f"instrument({patch.target!r}): {attribute!r} cannot be replaced on {owner!r} ({exc})"
        ) from None
    patch.owner, patch.original, patch.replacement, patch.created = (
        owner,
        original,
        replacement,
        created,
    )


def _restore(patch: _Patch) -> None:
    """Put the original back where *patch* replaced it, unless someone replaced it since."""
    owner, attribute = patch.owner, patch.attribute
    patch.owner = None
    if vars(owner).get(attribute) is not patch.replacement:
        logger.warning(
            "obs_sdk: obs.uninstrument(%r) left %s.%s alone: something else replaced it "
            "after obs.instrument() did",
            patch.target,
            getattr(owner, "__name__", owner),
            attribute,
        )
        return
    if patch.created:
        delattr(owner, attribute)  # it was inherited: lookups reach the base class again
    else:
        setattr(owner, attribute, patch.original)
