"""valleys.optax as optax users meet it: imports, validation, pytree state, jit, composition,
hyperparameter injection, and sharded arrays on a 2-device CPU mesh."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from valleys import optax as vx


def _params() -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    return {"b": jnp.zeros(4), "w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}


def _grads(params: dict[str, jax.Array], rng: np.random.Generator) -> dict[str, jax.Array]:
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def _run(tx: optax.GradientTransformation, steps: int = 5) -> dict[str, jax.Array]:
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(steps):
        grads = _grads(params, np.random.default_rng(k))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_valleys_and_valleys_optim_never_import_jax() -> None:
    code = "import sys, valleys, valleys.optim; sys.exit('jax' in sys.modules or 'optax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: vx.alto(betas=(0.99, 0.9, 1.0)), r"betas\[2\] \(beta3\)"),
        (lambda: vx.alto(alpha=-200.0), "alpha"),
        (lambda: vx.alto(eps2=-1.0), "eps2"),
        (lambda: vx.lamb(-1e-3), "learning_rate"),
        (lambda: vx.eadamw(max_grad_norm=0.0), "max_grad_norm"),
        (lambda: vx.esgd(nesterov=True), "nesterov"),
        (lambda: vx.esgd(beta=1.0), "beta"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_alto_state_is_a_pytree_of_three_buffers() -> None:
    params = _params()
    state = vx.alto().init(params)
    sizes = [x.size for x in jax.tree.leaves(state)]
    n = sum(p.size for p in jax.tree.leaves(params))
    # E's buffer, m and v, and one step count; Lamb has no E buffer.
    assert sum(sizes) == 3 * n + 1
    assert sum(x.size for x in jax.tree.leaves(vx.lamb().init(params))) == 2 * n + 1


@pytest.mark.parametrize("make", [vx.alto, vx.eadamw, lambda: vx.esgd(momentum=0.9)])
def test_params_and_state_can_be_donated(make) -> None:
    """No two state leaves share a buffer, so a jitted step may update all of them in place."""
    tx = make()

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = _params()
    state = tx.init(params)
    grads = _grads(params, np.random.default_rng(0))
    jax.block_until_ready(jax.jit(step, donate_argnums=(0, 1))(params, state, grads))


def test_alto_without_trust_ratio_and_decay_is_eadam() -> None:
    """The chains compose: ALTO's trust ratio masked off everywhere (a ``False`` prefix mask)
    and no decay leave EAdam with ALTO's betas, eps and clip."""
    ours = _run(vx.alto(1e-2, weight_decay=0.0, trust_ratio_mask=False))
    theirs = _run(vx.eadam(1e-2, (0.99, 0.9, 0.99), eps=1e-6, max_grad_norm=1.0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_alpha_zero_is_no_e_and_inject_hyperparams_works() -> None:
    plain = _run(vx.alto(1e-2, alpha=0.0, betas=(0.99, 0.9, 0.99)))
    lamb = _run(vx.lamb(1e-2))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), plain, lamb)
    injected = _run(optax.inject_hyperparams(vx.alto)(learning_rate=1e-2))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), injected, _run(vx.alto(1e-2))
    )


def test_decay_mask_marks_matrices() -> None:
    assert vx.decay_mask(_params()) == {"b": False, "w": True}


_SHARDED = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec
    from valleys.optax import alto

    assert jax.device_count() == 2
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    w[:4] *= 10  # the two row shards' norms differ widely from each other and from the full one
    params = {"w": jnp.asarray(w), "b": jnp.asarray(rng.standard_normal(8), jnp.float32)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
             for _ in range(4)]

    def run(params, grads):
        tx = alto(1e-1)
        state, update = tx.init(params), jax.jit(tx.update)
        for g in grads:
            updates, state = update(g, state, params)
            params = optax.apply_updates(params, updates)
        return params

    full = run(params, grads)
    sharding = NamedSharding(jax.make_mesh((2,), ("x",)), PartitionSpec("x"))
    sharded = run(jax.device_put(params, sharding), jax.device_put(grads, sharding))
    assert sharded["w"].sharding.is_equivalent_to(sharding, 2), sharded["w"].sharding
    for k in params:
        a, b = np.asarray(sharded[k]), np.asarray(full[k])
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), (k, np.abs(a - b).max())
    # Per-shard norms would be another algorithm: the check above can tell them apart.
    halves = [run({"w": params["w"][i:i + 4], "b": params["b"][i:i + 4]},
                  [{"w": g["w"][i:i + 4], "b": g["b"][i:i + 4]} for g in grads]) for i in (0, 4)]
    local = np.concatenate([np.asarray(h["w"]) for h in halves])
    assert np.abs(local - np.asarray(full["w"])).max() > 1e-3
    print("ok")
    """
)


def test_trust_ratio_uses_full_array_norms_on_a_sharded_mesh() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
