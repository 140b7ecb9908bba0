"""Time grids: definitions against closed forms and published values, endpoints, monotonicity,
final_zero, and bad input."""

import numpy as np
import pytest

from diffusion_jax import schedules
from diffusion_jax.samplers.grids import list_grids, make_grid

CONTINUOUS = ("uniform", "karras", "logsnr", "quadratic", "shifted")
SCHEDULES = {
    "vp_linear": schedules.VPLinear(),
    "vp_cosine": schedules.VPCosine(),
    "ve": schedules.VE(),
    "edm": schedules.EDM(),
    "rectified_flow": schedules.RectifiedFlow(t_min=1e-3, t_max=0.999),
}


def test_listing():
    assert list_grids() == sorted(
        ["uniform", "karras", "edm", "logsnr", "quadratic", "shifted", "linspace", "leading", "trailing"]
        + ["polyexponential", "sgm_uniform", "simple", "beta", "ays"]
    )


@pytest.mark.parametrize("sched_name", list(SCHEDULES))
@pytest.mark.parametrize("name", CONTINUOUS + ("edm",))
def test_endpoints_monotone_dtype(name, sched_name, x64):
    sch = SCHEDULES[sched_name]
    g = np.asarray(make_grid(name, 12, sch))
    assert g.dtype == np.float64 and g.shape == (13,)
    assert np.all(np.diff(g) < 0)
    if name != "edm":
        assert g[0] == sch.t_max and g[-1] == sch.t_min
    # Explicit endpoints are hit exactly.
    g = np.asarray(make_grid(name, 7, sch, t_min=0.01, t_max=0.9))
    assert g[0] == 0.9 and g[-1] == 0.01 and g.shape == (8,)
    # final_zero appends t = 0 as an extra point.
    gz = np.asarray(make_grid(name, 7, sch, t_min=0.01, t_max=0.9, final_zero=True))
    assert gz.shape == (9,) and gz[-1] == 0.0 and np.array_equal(gz[:-1], g)


def test_karras_matches_eq5(x64):
    """Karras et al. 2022 eq. 5 in sigma~ = sigma/alpha, on a VP schedule (mapped through logSNR)."""
    sch = schedules.VPLinear()
    n, rho = 10, 7.0
    g = make_grid("karras", n, sch, rho=rho)
    st = np.asarray(sch.sigma(g) / sch.alpha(g))
    smax, smin = st[0], st[-1]
    i = np.arange(n + 1)
    expected = (smax ** (1 / rho) + i / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(st, expected, rtol=1e-10)


def test_edm_grid_is_edm_paper_sigmas(x64):
    """On the EDM schedule the 'edm' grid gives EDM's sigmas: 0.002..80, rho = 7 (Table 1)."""
    sch = schedules.EDM()
    n = 18
    g = make_grid("edm", n, sch)
    i = np.arange(n + 1)
    expected = (80 ** (1 / 7) + i / n * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(np.asarray(sch.sigma(g)), expected, rtol=1e-12)
    assert float(sch.sigma(g[0])) == pytest.approx(80.0) and float(sch.sigma(g[-1])) == pytest.approx(0.002)
    # On VP-linear (sigma~ range ~[0.045, 157]) the EDM range is clipped to the schedule's.
    vp = schedules.VPLinear()
    gv = np.asarray(make_grid("edm", 5, vp))
    assert gv[-1] == vp.t_min and float(vp.sigma(gv[0]) / vp.alpha(gv[0])) == pytest.approx(80.0, rel=1e-9)


def test_logsnr_quadratic_shifted_uniform_definitions(x64):
    sch = schedules.VPLinear()
    lam = np.asarray(sch.logsnr(make_grid("logsnr", 9, sch)))
    np.testing.assert_allclose(np.diff(lam), np.full(9, (lam[-1] - lam[0]) / 9), rtol=1e-9)
    q = np.asarray(make_grid("quadratic", 9, sch))
    np.testing.assert_allclose(
        np.diff(np.sqrt(q)), np.full(9, (np.sqrt(q[-1]) - np.sqrt(q[0])) / 9), rtol=1e-12
    )
    u = np.asarray(make_grid("uniform", 4, sch, t_min=0.2, t_max=1.0))
    np.testing.assert_allclose(u, [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-15)
    # SD3 shift: on the linear path, shifting the grid lowers logSNR by 2 log(shift) relative to the
    # uniform grid it came from (Esser et al. 2024, eq. 23).
    rf = schedules.RectifiedFlow()
    s = 3.0
    gs = np.asarray(make_grid("shifted", 8, rf, t_min=0.05, t_max=0.95, shift=s))
    back = gs / (s - (s - 1.0) * gs)
    np.testing.assert_allclose(np.diff(back), np.full(8, (back[-1] - back[0]) / 8), rtol=1e-10)
    np.testing.assert_allclose(
        np.asarray(rf.logsnr(gs))[1:-1], np.asarray(rf.logsnr(back))[1:-1] - 2 * np.log(s), rtol=1e-10
    )


def test_discrete_spacings_lin_et_al_table2(x64):
    """Lin et al. 2024, Table 2 (T = 1000, S = 10 timesteps -> num_steps = 9)."""
    sch = schedules.VPDiscrete()
    expect = {
        "linspace": [1000, 889, 778, 667, 556, 445, 334, 223, 112, 1],
        "leading": [901, 801, 701, 601, 501, 401, 301, 201, 101, 1],
        "trailing": [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100],
    }
    for name, steps in expect.items():
        g = np.asarray(make_grid(name, 9, sch))
        np.testing.assert_allclose(g, np.asarray(steps) / 1000.0, rtol=0, atol=1e-15)
        gz = np.asarray(make_grid(name, 9, sch, final_zero=True))
        assert gz.shape == (11,) and gz[-1] == 0.0
    # Trailing with a final zero is DDIM's S-step uniform grid 1.0, 0.9, ..., 0.
    np.testing.assert_allclose(
        np.asarray(make_grid("trailing", 9, sch, final_zero=True)), np.linspace(1, 0, 11)
    )
    g = np.asarray(make_grid("trailing", 49, sch, num_train_steps=100))
    np.testing.assert_allclose(g, np.arange(100, 0, -2) / 100.0)


def test_float32_default():
    g = make_grid("karras", 5, schedules.EDM())
    assert g.dtype == np.float32 and np.all(np.diff(np.asarray(g)) < 0)


@pytest.mark.parametrize(
    "args, kw, match",
    [
        (("nope", 5), {}, "valid grids: \\['ays', 'beta', 'edm', 'karras'"),
        (("karras", 0), {}, "num_steps"),
        (("karras", 5), {"shift": 2.0}, "valid options: \\['rho'\\]"),
        (("uniform", 5), {"rho": 7}, "unknown option"),
        (("uniform", 5), {"t_min": 0.5, "t_max": 0.5}, "t_min < t_max"),
        (("trailing", 5), {"t_min": 0.1}, "fixed by the discrete spacing"),
        (("trailing", 1000), {}, "exceed the 1000 training steps"),
        (("shifted", 5), {"shift": -1.0}, "shift"),
        (("karras", 5), {"t_min": 0.0}, "sigma~"),
        (("rf_karras", 5), {}, "sigma/alpha must be finite"),
        (("rf_logsnr", 5), {}, "logSNR must be finite"),
    ],
)
def test_bad_input(args, kw, match, x64):
    name = args[0]
    sch = schedules.VPDiscrete() if name == "trailing" else schedules.VPLinear()
    if name.startswith("rf_"):
        # RF at its default t_max = 1 is pure noise: sigma/alpha and logSNR are infinite there.
        sch, name = schedules.RectifiedFlow(), name[3:]
    with pytest.raises(ValueError, match=match):
        make_grid(name, args[1], sch, **kw)


def test_final_zero_twice_rejected(x64):
    with pytest.raises(ValueError, match="already ends"):
        make_grid("uniform", 4, schedules.RectifiedFlow(), t_min=0.0, final_zero=True)
