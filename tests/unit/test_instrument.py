"""obs.instrument / obs.uninstrument: decorating code that is not edited.

Each test writes tiny modules under its own unique names into tmp_path (wrapt's import
hooks are process-wide and cannot be unregistered, so names are never reused), puts
tmp_path on sys.path, and removes the modules, the path entry and every instrumentation
it made afterwards.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import obs_sdk as obs
from obs_sdk.testing import capture

BILLING = '''
class Account:
    def __init__(self, account_id):
        self.account_id = account_id

    def refund(self, payment_id, amount=0):
        """Refund a payment."""
        return amount

    @classmethod
    def open(cls, account_id):
        return cls(account_id)

    @staticmethod
    def fee(amount):
        return amount // 10

    async def arefund(self, payment_id):
        return payment_id

    class Ledger:
        def post(self, entry):
            return entry


class Savings(Account):
    pass


def charge(customer, amount):
    """Charge a customer."""
    return amount


LIMIT = 10
'''


class Modules:
    """Writes uniquely named modules into a directory on sys.path; cleans up after."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []
        self.targets: list[str] = []

    def write(self, source: str = BILLING) -> str:
        name = f"obs_instr_{uuid.uuid4().hex[:10]}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        importlib.invalidate_caches()
        return name

    def load(self, source: str = BILLING) -> ModuleType:
        return importlib.import_module(self.write(source))

    def instrument(self, target: str, decorator: Callable[[Any], Any]) -> None:
        self.targets.append(target)
        obs.instrument(target, decorator)


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Modules]:
    helper = Modules(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield helper
    finally:
        for target in helper.targets:
            obs.uninstrument(target)
        sys.path.remove(str(tmp_path))
        for name in helper.names:
            sys.modules.pop(name, None)


def actions(cap: Any) -> list[tuple[str, Any, Any]]:
    return [(a["action"], a["resource_id"], a["metadata"]) for a in cap.audits]


class TestModuleImportedBefore:
    def test_function_is_decorated_at_once(self, modules: Modules) -> None:
        """An imported module's function is replaced by the decorated one immediately;
        it keeps its name, signature and docstring."""
        mod = modules.load()
        original = mod.charge
        modules.instrument(
            f"{mod.__name__}:charge",
            obs.audited("customer.charged", metadata={"customer": "{customer}"}),
        )
        with capture() as cap:
            assert mod.charge("cus_1", 50) == 50
        assert actions(cap) == [("customer.charged", None, {"customer": "cus_1"})]
        assert mod.charge is not original
        assert mod.charge.__wrapped__ is original
        assert inspect.signature(mod.charge) == inspect.signature(original)
        assert mod.charge.__doc__ == "Charge a customer."

    def test_code_that_imported_the_name_before_keeps_the_original(self, modules: Modules) -> None:
        """`from mod import charge` before instrumenting holds the old function: only
        lookups made afterwards see the replacement (why instrumenting early matters)."""
        mod = modules.load()
        early = mod.charge
        modules.instrument(f"{mod.__name__}:charge", obs.audited("customer.charged"))
        with capture() as cap:
            early("cus_1", 1)
            mod.charge("cus_1", 1)
        assert [a["action"] for a in cap.audits] == ["customer.charged"]


class TestModuleImportedAfter:
    def test_function_is_decorated_when_the_module_is_imported(self, modules: Modules) -> None:
        """Instrumenting a module that is not imported yet waits for its import."""
        name = modules.write()
        modules.instrument(
            f"{name}:charge", obs.audited("customer.charged", metadata={"amount": "{amount}"})
        )
        assert name not in sys.modules  # instrument() never imports the module itself
        mod = importlib.import_module(name)
        with capture() as cap:
            mod.charge("cus_1", 7)
        assert actions(cap) == [("customer.charged", None, {"amount": 7})]

    def test_a_from_import_after_instrumenting_gets_the_decorated_function(
        self, modules: Modules
    ) -> None:
        """Instrumented before the application imports it, every importer sees the new one."""
        name = modules.write()
        modules.instrument(f"{name}:charge", obs.audited("customer.charged"))
        namespace: dict[str, Any] = {}
        exec(f"from {name} import charge", namespace)  # what the application does
        with capture() as cap:
            namespace["charge"]("cus_1", 1)
        assert [a["action"] for a in cap.audits] == ["customer.charged"]

    def test_a_method_is_decorated_when_the_module_is_imported(self, modules: Modules) -> None:
        """Class.method targets wait for the import too."""
        name = modules.write()
        modules.instrument(
            f"{name}:Account.refund",
            obs.audited("payment.refunded", resource=obs.Resource("payment", "{payment_id}")),
        )
        mod = importlib.import_module(name)
        with capture() as cap:
            assert mod.Account("acc_1").refund("pay_1", amount=3) == 3
        assert actions(cap) == [("payment.refunded", "pay_1", {})]


class TestMethodsKeepBinding:
    def test_instance_method_templates_see_self(self, modules: Modules) -> None:
        """The decorator gets the function as defined: templates bind against
        (self, payment_id, amount), and the method still binds to its instance."""
        mod = modules.load()
        modules.instrument(
            f"{mod.__name__}:Account.refund",
            obs.audited(
                "payment.refunded",
                resource=obs.Resource("payment", "{payment_id}"),
                metadata={"account": "{self.account_id}", "amount": "{amount}"},
            ),
        )
        with capture() as cap:
            assert mod.Account("acc_1").refund("pay_1", 5) == 5
        assert actions(cap) == [
            ("payment.refunded", "pay_1", {"account": "acc_1", "amount": 5}),
        ]
        assert list(inspect.signature(mod.Account.refund).parameters) == [
            "self",
            "payment_id",
            "amount",
        ]
        assert mod.Account.refund.__doc__ == "Refund a payment."

    def test_classmethod_stays_a_classmethod(self, modules: Modules) -> None:
        """A classmethod is unwrapped for the decorator and wrapped again: it binds to the
        class, called on the class or on an instance."""
        mod = modules.load()
        modules.instrument(
            f"{mod.__name__}:Account.open",
            obs.audited("account.opened", resource=obs.Resource("account", "{account_id}")),
        )
        assert isinstance(vars(mod.Account)["open"], classmethod)
        with capture() as cap:
            assert isinstance(mod.Account.open("acc_1"), mod.Account)
            assert isinstance(mod.Savings.open("acc_2"), mod.Savings)  # cls is the subclass
            mod.Account("x").open("acc_3")
        assert [a["resource_id"] for a in cap.audits] == ["acc_1", "acc_2", "acc_3"]

    def test_staticmethod_stays_a_staticmethod(self, modules: Modules) -> None:
        """A staticmethod gets no self or cls, from the class or an instance."""
        mod = modules.load()
        modules.instrument(
            f"{mod.__name__}:Account.fee",
            obs.audited("fee.computed", metadata={"amount": "{amount}"}),
        )
        assert isinstance(vars(mod.Account)["fee"], staticmethod)
        with capture() as cap:
            assert mod.Account.fee(100) == 10
            assert mod.Account("acc_1").fee(50) == 5
        assert [a["metadata"] for a in cap.audits] == [{"amount": 100}, {"amount": 50}]

    def test_async_method(self, modules: Modules) -> None:
        """A coroutine method gets the async wrapper: recorded when it completes."""
        mod = modules.load()
        modules.instrument(
            f"{mod.__name__}:Account.arefund",
            obs.audited("payment.refunded", resource=obs.Resource("payment", "{payment_id}")),
        )
        with capture() as cap:
            assert asyncio.run(mod.Account("acc_1").arefund("pay_9")) == "pay_9"
        assert [a["resource_id"] for a in cap.audits] == ["pay_9"]

    def test_nested_class_method(self, modules: Modules) -> None:
        """Dotted paths reach nested classes."""
        mod = modules.load()
        modules.instrument(f"{mod.__name__}:Account.Ledger.post", obs.audited("ledger.posted"))
        with capture() as cap:
            assert mod.Account.Ledger().post("e") == "e"
        assert [a["action"] for a in cap.audits] == ["ledger.posted"]

    def test_inherited_method_is_set_on_the_named_class_only(self, modules: Modules) -> None:
        """Savings inherits refund: instrumenting Savings.refund leaves Account's alone, and
        uninstrumenting removes the shadow so Savings inherits it again."""
        mod = modules.load()
        target = f"{mod.__name__}:Savings.refund"
        modules.instrument(target, obs.audited("savings.refunded"))
        with capture() as cap:
            mod.Savings("s").refund("p1")
            mod.Account("a").refund("p2")
        assert [a["action"] for a in cap.audits] == ["savings.refunded"]
        assert obs.uninstrument(target) is True
        assert "refund" not in vars(mod.Savings)
        assert mod.Savings.refund is mod.Account.refund


class TestUninstrument:
    @pytest.mark.parametrize("path", ["charge", "Account.refund", "Account.open", "Account.fee"])
    def test_restores_the_exact_original(self, modules: Modules, path: str) -> None:
        """The attribute gets back the very object that was there (a classmethod or
        staticmethod object included), and calls record nothing any more."""
        mod = modules.load()
        attribute = path.rpartition(".")[2]
        owner = mod if "." not in path else mod.Account
        before = vars(owner)[attribute]
        target = f"{mod.__name__}:{path}"
        modules.instrument(target, obs.audited("x"))
        assert vars(owner)[attribute] is not before
        assert obs.uninstrument(target) is True
        assert vars(owner)[attribute] is before
        with capture() as cap:
            mod.charge("c", 1)
            mod.Account("a").refund("p")
            mod.Account.open("a")
            mod.Account.fee(1)
        assert cap.audits == []

    def test_before_the_import_nothing_is_applied(self, modules: Modules) -> None:
        """Uninstrumenting a target still waiting for its module cancels it."""
        name = modules.write()
        modules.instrument(f"{name}:charge", obs.audited("customer.charged"))
        assert obs.uninstrument(f"{name}:charge") is True
        mod = importlib.import_module(name)
        with capture() as cap:
            mod.charge("c", 1)
        assert cap.audits == []

    def test_nothing_to_remove(self, modules: Modules) -> None:
        """uninstrument of a target never instrumented (or already removed) is False."""
        mod = modules.load()
        assert obs.uninstrument(f"{mod.__name__}:charge") is False
        modules.instrument(f"{mod.__name__}:charge", obs.audited("x"))
        assert obs.uninstrument(f"{mod.__name__}:charge") is True
        assert obs.uninstrument(f"{mod.__name__}:charge") is False

    def test_a_later_replacement_by_someone_else_is_left_alone(
        self, modules: Modules, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When other code replaced the attribute after instrument(), uninstrument does not
        clobber it, and says so."""
        mod = modules.load()
        modules.instrument(f"{mod.__name__}:charge", obs.audited("x"))

        def theirs(customer: str, amount: int) -> int:
            return -1

        mod.charge = theirs
        with caplog.at_level(logging.WARNING, logger="obs_sdk"):
            assert obs.uninstrument(f"{mod.__name__}:charge") is True
        assert mod.charge is theirs
        assert "something else replaced it" in caplog.text


class TestIdempotency:
    def test_instrumenting_twice_records_once(self, modules: Modules) -> None:
        """The same target instrumented twice wraps the original once: one record per call."""
        mod = modules.load()
        decorator = obs.audited("customer.charged")
        modules.instrument(f"{mod.__name__}:charge", decorator)
        modules.instrument(f"{mod.__name__}:charge", decorator)
        with capture() as cap:
            mod.charge("c", 1)
        assert [a["action"] for a in cap.audits] == ["customer.charged"]

    def test_a_second_decorator_replaces_the_first(self, modules: Modules) -> None:
        """The second instrument() call wins, and wraps the original, not the first wrapper."""
        mod = modules.load()
        original = mod.Account.__dict__["refund"]
        modules.instrument(f"{mod.__name__}:Account.refund", obs.audited("first"))
        modules.instrument(f"{mod.__name__}:Account.refund", obs.audited("second"))
        with capture() as cap:
            mod.Account("a").refund("p")
        assert [a["action"] for a in cap.audits] == ["second"]
        assert mod.Account.__dict__["refund"].__wrapped__ is original
        obs.uninstrument(f"{mod.__name__}:Account.refund")
        assert mod.Account.__dict__["refund"] is original

    def test_the_last_decorator_before_the_import_wins(self, modules: Modules) -> None:
        """Replacing a waiting instrumentation: only the last one is applied at import."""
        name = modules.write()
        modules.instrument(f"{name}:charge", obs.audited("first"))
        modules.instrument(f"{name}:charge", obs.audited("second"))
        mod = importlib.import_module(name)
        with capture() as cap:
            mod.charge("c", 1)
        assert [a["action"] for a in cap.audits] == ["second"]


class TestErrors:
    @pytest.mark.parametrize(
        "target",
        ["billing", "billing:", ":refund", "billing.refund", "billing:refund()", "a b:c",
         "billing::refund", "billing:Account.", "1billing:refund", "", None, 42],
    )  # fmt: skip
    def test_a_bad_target_names_the_expected_form(self, target: Any) -> None:
        """A target that is not 'module:attribute.path' is a ConfigurationError saying so."""
        with pytest.raises(obs.ConfigurationError, match=r"'package\.module:function'"):
            obs.instrument(target, obs.audited("x"))
        with pytest.raises(obs.ConfigurationError, match=r"'package\.module:Class\.method'"):
            obs.uninstrument(target)

    def test_a_decorator_that_is_not_callable(self, modules: Modules) -> None:
        """The second argument must be a decorator."""
        mod = modules.load()
        with pytest.raises(obs.ConfigurationError, match="takes a decorator"):
            obs.instrument(f"{mod.__name__}:charge", "payment.refunded")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("path", "message"),
        [
            ("refund", "has no 'refund'"),
            ("Account.close", "has no 'Account.close'"),
            ("LIMIT", "not a function or method"),
            ("Account", "names a class"),
        ],
    )
    def test_a_bad_attribute_in_an_imported_module_raises_at_once(
        self, modules: Modules, path: str, message: str
    ) -> None:
        """The module is there to check: the mistake is a ConfigurationError now, and
        nothing is changed or registered."""
        mod = modules.load()
        before = dict(vars(mod))
        with pytest.raises(obs.ConfigurationError, match=message):
            obs.instrument(f"{mod.__name__}:{path}", obs.audited("x"))
        assert dict(vars(mod)) == before
        assert obs.uninstrument(f"{mod.__name__}:{path}") is False

    def test_a_template_that_does_not_fit_raises_at_once(self, modules: Modules) -> None:
        """The decorator's own checks run against the real signature."""
        mod = modules.load()
        with pytest.raises(obs.ConfigurationError, match="invoice_id"):
            obs.instrument(
                f"{mod.__name__}:Account.refund",
                obs.audited("x", resource=obs.Resource("invoice", "{invoice_id}")),
            )
        assert "refund" in vars(mod.Account)
        assert not hasattr(mod.Account.refund, "__wrapped__")

    def test_an_attribute_that_cannot_be_set(self) -> None:
        """A built-in type's method cannot be replaced: ConfigurationError, not TypeError."""
        with pytest.raises(obs.ConfigurationError, match="cannot be replaced"):
            obs.instrument("builtins:str.upper", lambda f: lambda *a: f(*a))
        assert "x".upper() == "X"

    def test_a_failed_replacement_keeps_the_previous_instrumentation(
        self, modules: Modules
    ) -> None:
        """Re-instrumenting with a decorator that refuses the function leaves the first one."""
        mod = modules.load()
        modules.instrument(f"{mod.__name__}:charge", obs.audited("first"))
        with pytest.raises(obs.ConfigurationError):
            obs.instrument(f"{mod.__name__}:charge", obs.audited("x", metadata={"y": "{nope}"}))
        with capture() as cap:
            mod.charge("c", 1)
        assert [a["action"] for a in cap.audits] == ["first"]

    @pytest.mark.parametrize(
        ("path", "decorator", "message"),
        [
            ("refund", obs.audited("x"), "has no 'refund'"),
            ("charge", obs.audited("x", metadata={"y": "{nope}"}), "nope"),
        ],
    )
    def test_a_bad_target_found_at_import_is_logged_not_raised(
        self,
        modules: Modules,
        caplog: pytest.LogCaptureFixture,
        path: str,
        decorator: Any,
        message: str,
    ) -> None:
        """An import hook cannot raise into the importer: the import succeeds, the error is
        logged naming the target, and the instrumentation is dropped."""
        name = modules.write()
        modules.instrument(f"{name}:{path}", decorator)
        with caplog.at_level(logging.ERROR, logger="obs_sdk"):
            mod = importlib.import_module(name)
        assert mod.charge("c", 2) == 2
        [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert f"obs.instrument('{name}:{path}')" in logged.getMessage()
        assert message in logged.getMessage()
        assert obs.uninstrument(f"{name}:{path}") is False


class TestImportCost:
    def run(self, code: str) -> list[str]:
        wanted = "{'wrapt', 'fastapi', 'starlette'}"
        script = (
            f"import sys, json\n{code}\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {wanted})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)

    def test_importing_obs_sdk_imports_neither_wrapt_nor_a_framework(self) -> None:
        """`import obs_sdk` loads no wrapt, fastapi or starlette; the ASGI middleware
        module needs no framework either."""
        assert self.run("import obs_sdk, obs_sdk.testing, obs_sdk.integrations.asgi") == []

    def test_wrapt_comes_with_the_first_waiting_target(self) -> None:
        """The check above can fail: instrumenting a module not imported yet loads wrapt."""
        code = "import obs_sdk as obs\nobs.instrument('obs_not_imported_yet:f', obs.audited('x'))"
        assert "wrapt" in self.run(code)
