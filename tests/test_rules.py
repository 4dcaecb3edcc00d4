"""The pair object: ``PairRule``, ``register_rule``, ``get_rule``, ``RULES``, the fallbacks to
the chain rule, the wrappers ``register_fused`` / ``register_hessian`` and the views of
earlier versions, and one vocabulary for ``method`` and ``kind``."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BrierWithHessian, fd_hessian_blocks

import jacobians as jac
from jacobians.rules.vocabulary import KINDS, METHODS


def test_built_in_pairs_are_rules_one_instance_per_family():
    rule = jac.RULES[(jac.Softmax, jac.CrossEntropy)]
    assert isinstance(rule, jac.PairRule) and rule.canonical
    assert jac.RULES[(jac.Softmax, jac.KLDivergence)] is rule is jac.RULES[(jac.LogSoftmax, jac.NLLLoss)]
    assert jac.get_rule(jac.Softmax(), jac.CrossEntropy()) is rule
    for key, r in jac.RULES.items():
        assert key in type(r).pairs and r.value_and_grad is not None

    class MyCE(jac.CrossEntropy):
        pass

    assert jac.get_rule(jac.Softmax(), MyCE()) is None  # exact classes
    assert {"PairRule", "register_rule", "get_rule", "RULES"} <= set(jac.__all__)


def test_register_rule_refuses_bad_classes_and_duplicates(restore_registries):
    with pytest.raises(TypeError, match="PairRule subclass"):
        jac.register_rule(dict)
    with pytest.raises(TypeError, match="PairRule subclass"):
        jac.register_rule(jac.RULES[(jac.Softmax, jac.CrossEntropy)])  # an instance

    class NoPairs(jac.PairRule):
        def value_and_grad(self, activation, loss, z, y):
            return None

    with pytest.raises(TypeError, match="pairs must be a non-empty tuple"):
        jac.register_rule(NoPairs)

    class NotClasses(NoPairs):
        pairs = ((jac.Softmax(), BrierWithHessian),)

    with pytest.raises(TypeError, match="activation_cls must be an Activation subclass"):
        jac.register_rule(NotClasses)

    class NotALoss(NoPairs):
        pairs = ((jac.Softmax, dict),)

    with pytest.raises(TypeError, match="loss_cls must be a Loss subclass"):
        jac.register_rule(NotALoss)

    class NoGrad(jac.PairRule):
        pairs = ((jac.Softmax, BrierWithHessian),)

    with pytest.raises(TypeError, match="must define value_and_grad"):
        jac.register_rule(NoGrad)

    class Duplicate(NoPairs):
        pairs = ((jac.Softmax, jac.CrossEntropy),)

    with pytest.raises(ValueError, match="already registered"):
        jac.register_rule(Duplicate)
    assert type(jac.RULES[(jac.Softmax, jac.CrossEntropy)]).__name__ == "SoftmaxFamily"  # nothing changed

    class Replacing(Duplicate):
        replace = True

    assert jac.register_rule(Replacing) is Replacing
    assert isinstance(jac.RULES[(jac.Softmax, jac.CrossEntropy)], Replacing)
    jac.register_rule(replace=True)(Duplicate)
    assert isinstance(jac.RULES[(jac.Softmax, jac.CrossEntropy)], Duplicate)


def test_a_rule_without_second_order_falls_back_to_the_chain_rule(restore_registries, rng):
    @jac.register_rule
    class SoftmaxBrier(jac.PairRule):
        pairs = ((jac.Softmax, BrierWithHessian),)

        def value_and_grad(self, activation, loss, z, y):
            a = activation(z)
            value, g = loss.value_and_grad(a, y)
            return value, activation.vjp(z, g)

    head = jac.Head(jac.Softmax(), BrierWithHessian())
    z = rng.normal(size=(4, 3))
    y = rng.dirichlet(np.ones(3), size=4)
    v = rng.normal(size=z.shape)
    assert head.method == "fused" and head.hessian_rule is None and not head.ggn_is_hessian
    reference = fd_hessian_blocks(head, z, y)
    chain = head.hessian(z, y, method="chain")
    np.testing.assert_allclose(chain, reference, rtol=1e-6, atol=1e-9)
    for method in ("auto", "fused"):
        np.testing.assert_allclose(head.hessian(z, y, method=method), chain, rtol=1e-14, atol=1e-16)
        np.testing.assert_allclose(head.hvp(z, y, v, method=method), np.einsum("nij,nj->ni", reference, v),
                                   rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(head.grad(z, y, method="fused"), head.grad(z, y, method="chain"), rtol=1e-13)


def test_a_rule_with_a_hessian_is_used_and_its_missing_hvp_comes_from_it(restore_registries, rng):
    calls = []

    @jac.register_rule
    class SoftmaxBrier(jac.PairRule):
        pairs = ((jac.Softmax, BrierWithHessian),)

        def value_and_grad(self, activation, loss, z, y):
            return jac.Head(activation, loss).value_and_grad(z, y, method="vjp")

        def hessian(self, activation, loss, z, y):
            calls.append("hessian")
            return jac.Head(activation, loss).hessian_operator(z, y, method="chain")

    head = jac.Head(jac.Softmax(), BrierWithHessian())
    z, y = rng.normal(size=(3, 4)), rng.dirichlet(np.ones(4), size=3)
    v = rng.normal(size=z.shape)
    np.testing.assert_allclose(head.hvp(z, y, v), np.einsum("nij,nj->ni", fd_hessian_blocks(head, z, y), v),
                               rtol=1e-6, atol=1e-9)
    assert calls == ["hessian"]
    assert head.hessian_rule is not None and head.hessian_rule.rule is jac.get_rule(head.activation, head.loss_fn)


def test_register_fused_and_register_hessian_build_one_rule(restore_registries):
    def fused(act, loss, z, y):
        return jac.Head(act, loss).value_and_grad(z, y, method="vjp")

    def hessian(act, loss, z, y):
        return jac.Head(act, loss).hessian_operator(z, y, method="chain")

    assert jac.register_fused(jac.Softmax, BrierWithHessian)(fused) is fused
    assert jac.register_hessian(jac.Softmax, BrierWithHessian, canonical=False)(hessian) is hessian
    rule = jac.RULES[(jac.Softmax, BrierWithHessian)]
    assert rule.value_and_grad is fused and rule.hessian is hessian
    assert jac.fused.FUSED[(jac.Softmax, BrierWithHessian)] is fused is jac.Head(jac.Softmax(), BrierWithHessian()).fused_rule
    assert jac.curvature.HESSIAN_RULES[(jac.Softmax, BrierWithHessian)].hessian is hessian
    with pytest.raises(ValueError, match="already registered"):
        jac.register_fused(jac.Softmax, BrierWithHessian)(lambda *a: None)
    with pytest.raises(ValueError, match="already registered"):
        jac.register_hessian(jac.Softmax, BrierWithHessian)(lambda *a: None)
    with pytest.raises(TypeError, match="Loss subclass"):
        jac.register_hessian(jac.Softmax, dict)
    # pop one part, the other stays; pop both, the rule goes
    assert jac.curvature.HESSIAN_RULES.pop((jac.Softmax, BrierWithHessian)).hessian is hessian
    assert jac.RULES[(jac.Softmax, BrierWithHessian)].value_and_grad is fused
    assert jac.RULES[(jac.Softmax, BrierWithHessian)].hessian is None
    assert jac.fused.FUSED.pop((jac.Softmax, BrierWithHessian)) is fused
    assert (jac.Softmax, BrierWithHessian) not in jac.RULES


def test_views_restore_the_rule_they_were_read_from(monkeypatch):
    key = (jac.Softmax, jac.CrossEntropy)
    rule = jac.RULES[key]
    record = jac.curvature.HESSIAN_RULES[key]
    assert record.rule is rule and jac.curvature.HESSIAN_RULES[key] is record
    assert jac.fused.FUSED[key] is jac.fused.FUSED[key]  # one object, as before
    monkeypatch.setitem(jac.fused.FUSED, key, lambda act, loss, z, y: (0.0, z))
    assert jac.RULES[key] is not rule and jac.RULES[key].hessian == rule.hessian  # extended: second order kept
    monkeypatch.undo()
    assert jac.RULES[key] is rule
    with pytest.raises(TypeError):
        jac.checks.EXTREME_CLOSED_FORMS[key] = None  # read-only
    assert set(jac.checks.EXTREME_HESSIANS) <= set(jac.RULES)


def test_one_vocabulary_for_method_and_kind(rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    z, y = rng.normal(size=(4, 3)), rng.integers(0, 3, size=4)
    assert set(METHODS) == {"auto", "fused", "chain", "vjp", "jacobian"}
    np.testing.assert_array_equal(head.grad(z, y, method="chain"), head.grad(z, y, method="vjp"))
    for method in ("vjp", "jacobian"):
        with pytest.raises(ValueError, match="method must be one of"):
            head.hessian(z, y, method=method)
    for name, (meaning, _) in KINDS.items():
        if meaning.startswith("fisher") or meaning == "empirical_fisher":
            kw = {"mc_samples": 3, "seed": 1}
            canon = {"fisher": "exact", "fisher_mc": "mc", "empirical_fisher": "empirical"}[meaning]
            np.testing.assert_array_equal(head.fisher(z, y, kind=name, **kw), head.fisher(z, y, kind=canon, **kw))
    X = rng.normal(size=(4, 2))
    for a, b in (("fisher", "exact"), ("empirical_fisher", "empirical"), ("fisher_mc", "mc")):
        np.testing.assert_array_equal(jac.linear_curvature(X, head, z, y, kind=a, seed=0),
                                      jac.linear_curvature(X, head, z, y, kind=b, seed=0))
    with pytest.raises(ValueError, match=r"kind must be one of \('exact', 'mc', 'empirical'\)"):
        head.fisher(z, y, kind="ggn")


def test_a_new_built_in_rule_module_registers_with_no_other_edit(tmp_path):
    """A built-in pair's rule is one new module in ``jacobians/rules/``: the package imports
    every module of its own, so a copy of the package with one file added (and nothing else
    edited) has the rule in ``RULES``, and ``Head`` uses it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    pkg = Path(jac.__file__).parent
    shutil.copytree(pkg, tmp_path / "jacobians", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "jacobians" / "rules" / "identity_mae.py").write_text(
        "import numpy as np\n"
        "from ..activations import Identity\n"
        "from ..losses import MeanAbsoluteError\n"
        "from .base import PairRule, register_rule\n\n\n"
        "@register_rule\n"
        "class IdentityMAE(PairRule):\n"
        "    pairs = [(Identity, MeanAbsoluteError)]\n"
        "    canonical = False\n\n"
        "    def value_and_grad(self, activation, loss, z, y):\n"
        "        c = loss.reduction_scale(z, y)\n"
        "        return c * np.abs(z - y).sum(), c * np.sign(z - y) + 1000.0\n"
    )
    probe = (
        "import numpy as np, jacobians as jac\n"
        "r = jac.get_rule(jac.Identity(), jac.MeanAbsoluteError())\n"
        "z = np.array([[0.5, -1.0]]); y = np.zeros((1, 2))\n"
        "g = jac.Head(jac.Identity(), jac.MeanAbsoluteError()).grad(z, y, 'fused')\n"
        "print(type(r).__name__, type(r).__module__, g.tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "", "JACOBIANS_KERNELS": "numpy"},
    ).stdout.split()
    assert out[:2] == ["IdentityMAE", "jacobians.rules.identity_mae"]
    # sign(z − y)/(N·K) = ±0.5, and the planted +1000 shows it came from the new module's rule
    assert " ".join(out[2:]) == "[[1000.5, 999.5]]"
