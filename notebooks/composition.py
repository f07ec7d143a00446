# %% [markdown]
# # Composition: joint losses, schedules and a new margin in a few lines
#
# The losses are pure functions that return per-example values, so a joint loss is a
# weighted sum, a weight may be a schedule of the step (an optax schedule), and a new margin
# is a function of $\cos\theta_y$. This notebook
#
# 1. trains a tiny network with **softmax + λ·center loss** (Wen et al., ECCV 2016), the
#    centres moved by their own rule (`losses.update_centers`), and with DeepID2's
#    **identification + λ·verification** (Sun et al., NeurIPS 2014) with λ ramped up;
# 2. draws the **schedules**: the λ annealing of L-Softmax/SphereFace and optax schedules;
# 3. writes a **new margin loss** on the library's margin-softmax engine, checks it against
#    the built-in CosFace, and runs it chunked.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import faceloss_jax
from faceloss_jax import losses

FAST = os.environ.get("FACELOSS_NB_FAST") == "1"  # set by the tests: fewer steps
NUM_STEPS = 60 if FAST else 600
print(
    "faceloss_jax from",
    os.path.relpath(os.path.dirname(faceloss_jax.__file__)),
    "| steps:",
    NUM_STEPS,
)

# %% [markdown]
# ## Joint losses, one training loop
#
# Data: 4 classes of 12-D Gaussian inputs; network: a 2-layer MLP to 2-D features; a linear
# classifier $W \in \mathbb{R}^{2\times 4}$ with bias. The training loop takes the objective as a
# function `objective(features, labels, head, loss_state, step) -> (loss, new_loss_state)`,
# so each joint loss below is a few lines.

# %%
NUM_CLASSES, IN_DIM, PER_CLASS = 4, 12, 100
k_means, k_noise, k_init = jax.random.split(jax.random.PRNGKey(0), 3)
means = 1.5 * jax.random.normal(k_means, (NUM_CLASSES, IN_DIM))
labels = jnp.repeat(jnp.arange(NUM_CLASSES), PER_CLASS)
inputs = means[labels] + jax.random.normal(k_noise, (len(labels), IN_DIM))


def init_params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (IN_DIM, 32)) / np.sqrt(IN_DIM),
        "w2": jax.random.normal(k2, (32, 2)) / np.sqrt(32),
        "head": {"w": jax.random.normal(k3, (2, NUM_CLASSES)), "b": jnp.zeros(NUM_CLASSES)},
    }


def features(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


def train(objective, loss_state, *, num_steps=NUM_STEPS, learning_rate=1e-2):
    params = init_params(k_init)
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, loss_state, step):
        def loss_fn(p):
            return objective(features(p, inputs), labels, p["head"], loss_state, step)

        (loss, new_loss_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_loss_state, loss

    history = []
    for step in range(num_steps):
        params, opt_state, loss_state, loss = step_fn(params, opt_state, loss_state, step)
        history.append(float(loss))
    return features(params, inputs), loss_state, history


# %% [markdown]
# **Softmax + λ·center loss.** $L = \frac1B\sum_i \left[-\log\mathrm{softmax}(W^\top x_i + b)_{y_i}
# + \lambda\,\tfrac12\|x_i - c_{y_i}\|^2\right]$; the centres are not learned by gradient but
# moved after each step by $c_j \leftarrow c_j - \alpha\sum_{i:y_i=j}(c_j - x_i)/(1 + n_j)$
# (α = 0.5), a pure function that returns the new centres. The paper's λ is 0.003 on faces;
# on this toy problem 0.1 shows the effect within a few dozen steps.


# %%
def softmax_center(lam):
    def objective(x, y, head, centers, step):
        del step
        loss = (
            losses.softmax_cross_entropy(x, head["w"], y, bias=head["b"])
            + lam * losses.center_loss(x, centers, y)
        ).mean()
        return loss, losses.update_centers(centers, x, y, alpha=0.5)

    return objective


runs = {lam: train(softmax_center(lam), jnp.zeros((NUM_CLASSES, 2))) for lam in (0.0, 0.1)}


def spread(x, y):
    # Mean distance to the class mean, relative to the mean distance between class means.
    x, y = np.asarray(x), np.asarray(y)
    class_means = np.stack([x[y == c].mean(0) for c in range(NUM_CLASSES)])
    intra = np.linalg.norm(x - class_means[y], axis=1).mean()
    inter = np.linalg.norm(class_means[:, None] - class_means[None], axis=-1)
    return float(intra / inter[np.triu_indices(NUM_CLASSES, 1)].mean())


fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
for ax, (lam, (x, centers, history)) in zip(axes, runs.items()):
    x = np.asarray(x)
    for c in range(NUM_CLASSES):
        ax.scatter(*x[np.asarray(labels) == c].T, s=4)
    ax.scatter(*np.asarray(centers).T, c="k", marker="x", s=60, label="centres")
    ax.set(title=f"λ = {lam}: intra/inter spread {spread(x, labels):.3f}", aspect="equal")
    ax.legend()
    axes[2].plot(history, label=f"λ = {lam}")
axes[2].set(xlabel="step", ylabel="joint loss", yscale="log")
axes[2].legend()
plt.show()
assert spread(runs[0.1][0], labels) < spread(runs[0.0][0], labels)

# %% [markdown]
# **DeepID2: identification + λ·verification.** The verification signal is the contrastive
# loss over all in-batch pairs (`losses.contrastive_loss`), and λ is an optax schedule read at
# the (traced) step by `losses.weight_at`, which also accepts a plain number:

# %%
lam = optax.linear_schedule(0.0, 0.5, transition_steps=NUM_STEPS // 2)


def deepid2(x, y, head, state, step):
    ident = losses.softmax_cross_entropy(x, head["w"], y, bias=head["b"]).mean()
    verif = losses.contrastive_loss(x, y, margin=2.0)
    return ident + losses.weight_at(lam, step) * verif, state


x_deepid2, _, history = train(deepid2, None)
head = init_params(k_init)["head"]
x0 = features(init_params(k_init), inputs)
ident0 = losses.softmax_cross_entropy(x0, head["w"], labels, bias=head["b"]).mean()
assert np.isclose(deepid2(x0, labels, head, None, 0)[0], ident0)  # λ(0) = 0
print(
    f"λ at steps 0, {NUM_STEPS // 4}, {NUM_STEPS}:",
    [float(lam(s)) for s in (0, NUM_STEPS // 4, NUM_STEPS)],
)
print(
    f"intra/inter spread: softmax {spread(runs[0.0][0], labels):.3f}, "
    f"DeepID2 {spread(x_deepid2, labels):.3f}"
)

# %% [markdown]
# ## Schedules
#
# `losses.lambda_schedule(base, gamma, power, lambda_min)` is the annealing
# $\lambda = \max(\lambda_{\min}, \mathrm{base}\,(1 + \gamma\,\mathrm{step})^{-\mathrm{power}})$ of
# L-Softmax and SphereFace, an optax schedule like the others. The margin target is the blend
# $(\lambda\cos\theta + \psi(\theta))/(1 + \lambda)$, so a huge λ is the plain ("modified")
# softmax and λ → 0 the full margin:

# %%
steps = np.arange(0, 20_001, 50)
schedules = {
    "SphereFace: lambda_schedule() (1000, 0.12, 1, λ_min=5)": losses.lambda_schedule(),
    "L-Softmax MNIST: lambda_schedule(1000, 2.5e-5, 35, 0)": losses.lambda_schedule(
        1000.0, 2.5e-5, 35.0, 0.0
    ),
    "optax.exponential_decay(1000, 2000, 0.1)": optax.exponential_decay(1000.0, 2000, 0.1),
}
fig, ax = plt.subplots(figsize=(7, 4))
for name, schedule in schedules.items():
    ax.plot(steps, [float(losses.weight_at(schedule, s)) for s in steps], label=name)
ax.set(yscale="log", xlabel="step", ylabel="λ", ylim=(1e-2, 2e3))
ax.legend(fontsize="small")
plt.show()

x = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
w = jax.random.normal(jax.random.PRNGKey(2), (8, 5))
y = jnp.arange(16) % 5
sphereface_at = jax.jit(
    lambda step: losses.sphereface(
        x, w, y, margin=4, lambda_=losses.weight_at(losses.lambda_schedule(), step)
    ).mean()
)
modified_softmax = losses.sphereface(x, w, y, margin=1).mean()
print(
    "SphereFace loss at steps 0, 100, 10⁶:",
    [round(float(sphereface_at(s)), 4) for s in (0, 100, 10**6)],
    "| modified softmax (m=1):",
    round(float(modified_softmax), 4),
)
assert np.isclose(sphereface_at(0), modified_softmax, rtol=0.05)
assert float(sphereface_at(10**6)) > float(sphereface_at(0))


# %% [markdown]
# ## A new margin, as a function
#
# The public engine `losses.margin_softmax(x, W, y, scale=s, margin_fn=f)` computes
# $\mathrm{logaddexp}(t_i, \mathrm{LSE}_{j\neq y_i} s\cos\theta_{ij}) - t_i$ with the target
# logit $t_i = s\,f(\cos\theta_{y_i})$: `margin_fn` maps $\cos\theta_y$ to $f(\cos\theta_y)$,
# **without** the scale, which the engine applies once. Everything else, the chunked
# `custom_vjp`, the data-parallel and class-sharded layouts, comes with it. First, CosFace
# re-created in one call and checked against the built-in one:


# %%
def my_cosface(embeddings, weights, labels, *, scale=64.0, margin=0.35, chunk_size=None):
    return losses.margin_softmax(
        embeddings,
        weights,
        labels,
        scale=scale,
        margin_fn=lambda cos: cos - margin,
        chunk_size=chunk_size,
    )


k1, k2 = jax.random.split(jax.random.PRNGKey(3))
emb = jax.random.normal(k1, (32, 16))
centres = jax.random.normal(k2, (16, 100))
ids = jnp.arange(32) * 3 % 100


@jax.jit
def losses_and_grads(emb, centres):
    # Per-example losses and the gradient of their mean, for my_cosface and the built-in.
    def both(loss_fn):
        per_example = lambda e, w: loss_fn(e, w, ids, scale=30.0, margin=0.35)
        grads = jax.grad(lambda e, w: per_example(e, w).mean(), argnums=(0, 1))(emb, centres)
        return per_example(emb, centres), grads

    return both(my_cosface), both(losses.cosface)


(mine, g_mine), (builtin, g_builtin) = losses_and_grads(emb, centres)
print("max |my_cosface − losses.cosface| =", float(jnp.max(jnp.abs(mine - builtin))))
assert np.allclose(mine, builtin, rtol=1e-6, atol=1e-6)
assert all(np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g_mine, g_builtin))


# %% [markdown]
# A margin may depend on the example (MagFace's and AdaFace's do, through the feature norm):
# `per_example=(m,)` passes arrays with a leading batch axis to `margin_fn`, gathered with the
# embeddings in the data-parallel layout. And a loss whose logits are not scaled cosines
# (softmax, L-Softmax, SphereFace) uses the raw form
# `losses.raw_margin_softmax(x, W, y, spec=losses.Logits(...), target_fn=...)`, where `spec`
# says how the non-target logits $z = s\,\tilde x^\top \tilde W + b$ are formed and
# `target_fn(x, w_y, b_y)` returns the target logit itself. Both checked against the library:

# %%
per_sample_margin = jnp.where(ids % 2 == 0, 0.35, 0.0)  # CosFace on even ids, NormFace on odd
mixed = losses.margin_softmax(
    emb,
    centres,
    ids,
    scale=30.0,
    margin_fn=lambda cos, m: cos - m,
    per_example=(per_sample_margin,),
)
normface_all = losses.normface(emb, centres, ids, scale=30.0)
even = np.asarray(ids % 2 == 0)
assert np.allclose(mixed[even], builtin[even], rtol=1e-6, atol=1e-6)
assert np.allclose(mixed[~even], normface_all[~even], rtol=1e-6, atol=1e-6)

bias = jax.random.normal(jax.random.PRNGKey(4), (100,))
plain = losses.raw_margin_softmax(
    emb,
    centres,
    ids,
    bias=bias,
    spec=losses.Logits(normalize_embeddings=False, normalize_weights=False),
    target_fn=lambda x, w_y, b_y: jnp.sum(x * w_y, axis=-1) + b_y,
)
reference = losses.softmax_cross_entropy(emb, centres, ids, bias=bias)
print(
    "max |raw_margin_softmax − softmax_cross_entropy| =", float(jnp.max(jnp.abs(plain - reference)))
)
assert np.allclose(plain, reference, rtol=1e-5, atol=1e-5)


# %% [markdown]
# Now a margin the library does not have: a **fading cosine margin**,
# $f(\theta) = \cos\theta - m\,\frac{1 + \cos\theta}{2}$, which is CosFace's $m$ for easy samples
# ($\theta = 0$) and fades to zero for the hardest ($\theta = \pi$), so noisy labels far from
# their centre are not pushed harder. Its target curve next to CosFace's and ArcFace's:


# %%
def fading_margin(cos, margin):
    return cos - margin * (1.0 + cos) / 2.0


def fading_cosface(embeddings, weights, labels, *, scale=64.0, margin=0.35, chunk_size=None):
    # CosFace whose margin fades from m at θ = 0 to 0 at θ = π: s·(cos θ − m(1 + cos θ)/2).
    return losses.margin_softmax(
        embeddings,
        weights,
        labels,
        scale=scale,
        margin_fn=lambda cos: fading_margin(cos, margin),
        chunk_size=chunk_size,
    )


theta = np.linspace(0, np.pi, 361)
cos = jnp.asarray(np.cos(theta), jnp.float32)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(np.degrees(theta), cos, "k:", label="cos θ")
ax.plot(np.degrees(theta), cos - 0.35, label="CosFace m=0.35")
ax.plot(np.degrees(theta), losses.additive_angular_margin(cos, 0.5), label="ArcFace m=0.5")
ax.plot(np.degrees(theta), fading_margin(cos, 0.35), label="fading margin m=0.35")
ax.set(xlabel="θ (degrees)", ylabel="target logit / s")
ax.legend()
plt.show()


@jax.jit
def dense_and_chunked(emb, centres):
    def run(chunk_size):  # 100 classes in chunks of 16: 6 blocks and a remainder of 4
        per_example = lambda e, w: fading_cosface(e, w, ids, scale=30.0, chunk_size=chunk_size)
        grads = jax.grad(lambda e, w: per_example(e, w).mean(), argnums=(0, 1))(emb, centres)
        return per_example(emb, centres), grads

    return run(None), run(16)


(dense, g_dense), (chunked, g_chunked) = dense_and_chunked(emb, centres)
print("dense mean", float(dense.mean()), "| chunked mean", float(chunked.mean()))
assert np.allclose(dense, chunked, rtol=1e-5, atol=1e-6)
assert all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_dense, g_chunked))
# Between NormFace (m = 0) and CosFace: the fading margin never exceeds m.
normface = losses.normface(emb, centres, ids, scale=30.0)
assert np.all((normface <= dense + 1e-5) & (dense <= builtin + 1e-5))

# Its gradient is finite with every embedding exactly on its centre (θ = 0).
on_centre = centres[:, ids].T
g = jax.jit(jax.grad(lambda e: fading_cosface(e, centres, ids, chunk_size=16).sum()))(on_centre)
assert bool(jnp.all(jnp.isfinite(g)))
print("chunked value and gradient = dense; finite gradient at θ = 0")
