"""K0 of residual branches and MLPs against neural-tangents' infinite-width kernels (docs/architectures.md#kernel-maps).

neural-tangents (``stax``) has the same layers for part of the architectures: Dense (``parameterization="standard"``,
W_std = √C_W, b_std = √C_b), Relu/Erf/Gelu, LayerNorm (its kernel rule normalises a mean-zero field, so it stands
for ``rms`` and ``layernorm`` only where the field has mean zero: on the stream h or after a dense layer), and
FanOut/FanInSum for the residual h + √ε·branch(h) (the branch's last Dense scaled by ε). Its first Dense layer
(W_std = 1, no bias) turns the inputs X (P x n0) into the Gaussian field with kernel K_in = X Xᵀ/n0.
Skipped when neural-tangents is not installed (it needs jax; install it in a separate environment to run this).
"""
import numpy as np
import pytest

nt = pytest.importorskip("neural_tangents")
stax = nt.stax

from jax.experimental import enable_x64  # noqa: E402  (installed with neural-tangents)

from kerneleft import Network  # noqa: E402
from kerneleft.kernel import kernel  # noqa: E402

X = np.array([[1.0, 0.5, -0.3, 0.8], [0.2, -1.1, 0.9, 1.4], [-0.7, 0.4, 0.3, -1.2]])
K_IN = X @ X.T / X.shape[1]
PHI, RMS, LN = {"layer": "phi"}, {"layer": "rms"}, {"layer": "layernorm"}


def D(C_W, C_b=0.0, **kw):
    return {"layer": "dense", "C_W": C_W, "C_b": C_b, **kw}


def _activation(name):
    return {"relu": stax.Relu(), "erf": stax.Erf(), "gelu": stax.Gelu(approximate=False)}[name]


def _nt_branch(branch, act, scale):
    """The branch as stax layers; the last Dense layer's variances multiplied by ``scale``."""
    last = len(branch) - 1
    layers = []
    for i, layer in enumerate(branch):
        if layer["layer"] == "phi":
            layers.append(_activation(act))
        elif layer["layer"] in ("rms", "layernorm"):
            layers.append(stax.LayerNorm(axis=-1))
        else:
            s = scale if i == last else 1.0
            layers.append(stax.Dense(64, W_std=np.sqrt(s * layer["C_W"]), b_std=np.sqrt(s * layer["C_b"]),
                                     parameterization="standard"))
    return stax.serial(*layers)


def _nt_K0(branch, act, depth, T=None):
    """NNGP kernel of the depth-``depth`` network at X; T None: an MLP."""
    if T is None:
        block = _nt_branch(branch, act, 1.0)
    else:
        block = stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), _nt_branch(branch, act, T / depth)),
                            stax.FanInSum())
    net = stax.serial(stax.Dense(64, W_std=1.0, b_std=0.0, parameterization="standard"), *[block] * depth)
    with enable_x64():
        return np.asarray(net[2](X, None, "nngp"))


CASES = {
    "he_two_layer_relu": ("relu", [PHI, D(2.0, 0.1), PHI, D(1.5, 0.05)], 1.5),
    "pre_ln_x4_gelu": ("gelu", [LN, D(1.0, 0.0, width_ratio=4.0), PHI, D(1.0)], 1.5),
    "rms_block_erf": ("erf", [RMS, D(1.3, 0.2), PHI, D(1.0)], 1.5),
    "post_dense_ln_erf": ("erf", [PHI, D(1.0, 0.1), LN, D(2.0, 0.1)], 2.0),
    "mlp_relu_critical": ("relu", [PHI, D(2.0)], None),
    "mlp_erf_ln": ("erf", [D(1.0, 0.1), LN, PHI, D(2.0, 0.1)], None),
}


@pytest.mark.filterwarnings("ignore:`FanIn` layers assume independent inputs")
@pytest.mark.parametrize("case", list(CASES))
def test_K0_matches_neural_tangents(case):
    act, branch, T = CASES[case]
    d = dict(activation=act, branch=branch, depth=4, K_in=K_IN.tolist())
    d.update(architecture="mlp") if T is None else d.update(T=T)
    ours = kernel(Network(**d), "discrete")["K0"][-1]
    assert np.max(np.abs(ours - _nt_K0(branch, act, 4, T))) < 1e-10 * np.max(np.abs(ours))
