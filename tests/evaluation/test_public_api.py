"""The public names of `tcopilot_peft.evaluation`: each one in `__all__` imports from the package itself."""

import importlib
import subprocess
import sys

import pytest

import tcopilot_peft.evaluation as evaluation


@pytest.mark.parametrize("name", evaluation.__all__)
def test_every_public_name_imports(name):
    namespace: dict = {}
    exec(f"from tcopilot_peft.evaluation import {name}", namespace)
    value = namespace[name]
    # The name is the submodule's own object, not a copy.
    defining = importlib.import_module(f"tcopilot_peft.evaluation.{evaluation._EXPORTS[name]}")
    assert value is getattr(defining, name)


def test_all_is_sorted_and_unique():
    assert evaluation.__all__ == sorted(set(evaluation.__all__))


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from tcopilot_peft.evaluation import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == evaluation.__all__


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        evaluation.not_a_name  # noqa: B018
    with pytest.raises(ImportError, match="not_a_name"):
        exec("from tcopilot_peft.evaluation import not_a_name", {})


def test_submodules_still_import_as_modules():
    from tcopilot_peft.evaluation import lm_eval, recommendation

    assert recommendation.ranking_metrics is evaluation.ranking_metrics
    assert lm_eval.CopilotLM is evaluation.CopilotLM


def test_importing_the_package_loads_no_submodule():
    # Lazy: `import tcopilot_peft.evaluation` adds nothing to what `import tcopilot_peft` loaded (lm-eval above all).
    code = (
        "import sys, tcopilot_peft; before = set(sys.modules); import tcopilot_peft.evaluation; "
        "print(sorted(m for m in set(sys.modules) - before if m != 'tcopilot_peft.evaluation'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
