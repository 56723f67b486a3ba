"""
CLEX (Chen et al. 2023, arXiv 2310.16450): RoPE frequencies that follow a learned ODE in the scaling factor t,
kept beside the LLaMA core: the model asks CLEX.cos_sin for its rotary tables as it asks rope.py for any other
scheme's. Two small matrices (model.clex_layer.proj_func.ode_up_proj / ode_down_proj, the names of the
original CLEX checkpoints), shared by all layers and trained with the model (train.py --method clex).
"""
import math

import torch
import torch.nn as nn

from rope import cos_sin, default_inv_freq, original_len

CLEX_ACTS = {"tanh": torch.tanh, "silu": torch.nn.functional.silu}


def rk4(f, y, t0, t1, steps):
    """Integrate dy/dt = f(t, y) from t0 to t1 in `steps` equal steps of fourth-order Runge-Kutta,
    the 3/8 rule (what torchdiffeq's fixed-grid "rk4", used by the CLEX code, computes)."""
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        k1 = f(t, y)
        k2 = f(t + h / 3, y + h * k1 / 3)
        k3 = f(t + 2 * h / 3, y + h * (k2 - k1 / 3))
        k4 = f(t + h, y + h * (k1 - k2 + k3))
        y = y + h * (k1 + 3 * (k2 + k3) + k4) / 8
    return y


def clex_inv_freq(head_dim, base, w_up, w_down, max_t, time_dt=0.01, act="tanh"):
    """CLEX (Chen et al. 2023, arXiv 2310.16450): log frequencies z(t) = log inv_freq(t) for a
    continuous scaling factor t >= 1, a neural ODE that starts from plain RoPE, z(1) = log theta:
        dz/dt = act((z + log theta_ntk(t)) W_up) W_down + d/dt log theta_ntk(t),
        log theta_ntk_j(t) = log theta_j - 2j/(d-2) * log(2t - 1)    (NTK with alpha = 2t - 1).
    W_up [D/2, pD], W_down [pD, D/2]. (The CLEX code uses base 10000 for theta_ntk whatever the
    model's base; we use rope_theta.) We integrate u = z - log theta_ntk(t), u(1) = 0:
        du/dt = act((u + 2 log theta_ntk(t)) W_up) W_down,
    the same ODE with its NTK part solved exactly: W_down = 0 gives NTK(alpha = 2t - 1) with no
    rounding piled up over the 1/time_dt fp32 steps. RK4 in fp32, steps of 1 / round(1 / time_dt).
    Returns inv_freq at t = 1..max_t, [max_t, D/2]: training (max_t = t) and inference (the whole
    grid) take the same steps, so they agree exactly."""
    theta = default_inv_freq(head_dim, base).to(w_up.device)
    log_theta = theta.log()
    c = (torch.arange(0, head_dim, 2, dtype=torch.float32) / (head_dim - 2)).to(w_up.device)  # 2j / (d - 2)
    w_up, w_down, act = w_up.float(), w_down.float(), CLEX_ACTS[act]

    def log_ntk(t):
        return log_theta - c * math.log(2 * t - 1)

    def du_dt(t, u):
        return act((u + 2 * log_ntk(t)) @ w_up) @ w_down

    u, steps, inv_freq = torch.zeros_like(theta), round(1 / time_dt), [theta]  # t = 1: plain RoPE, exactly
    for t in range(1, max_t):
        u = rk4(du_dt, u, t, t + 1, steps)
        inv_freq.append((u + log_ntk(t + 1)).exp())
    return torch.stack(inv_freq)


def clex_factor(seq_len, original_len, max_factor):
    """CLEX at inference: t = ceil(L / L0) for L = max(position_ids) + 1, within 1..max_factor."""
    return min(max(math.ceil(seq_len / original_len), 1), max_factor)


def check_clex(rs):
    """Raise on a bad CLEX rope_scaling; max_factor is required, the rest default as in the paper."""
    checks = {"max_factor": (lambda v: type(v) is int and v >= 1, "an integer >= 1"),
              "param_factor": (lambda v: type(v) is int and v >= 1, "an integer >= 1"),
              "time_dt": (lambda v: type(v) in (int, float) and 0 < v <= 1, "a number in (0, 1]"),
              "act": (lambda v: v in CLEX_ACTS, f"one of {', '.join(CLEX_ACTS)}"),
              "log_scale": (lambda v: type(v) is bool, "true or false"),
              "original_max_position_embeddings": (lambda v: type(v) is int and v >= 1, "an integer >= 1")}
    if "max_factor" not in rs:
        raise ValueError("clex: rope_scaling needs max_factor (the largest scaling factor t, e.g. 16)")
    for key, (ok, want) in checks.items():
        if key in rs and not ok(rs[key]):
            raise ValueError(f"clex: rope_scaling {key}={rs[key]!r} is invalid; expected {want}")


class CLEX(nn.Module):
    """CLEX's learned frequency ODE (clex_inv_freq), one for all layers. Parameter names as in
    the original CLEX checkpoints (model.clex_layer.proj_func.ode_up_proj / ode_down_proj)."""

    def __init__(self, config):
        super().__init__()
        D, p = config.head_dim, config.rope_scaling.get("param_factor", 1)
        self.proj_func = nn.ParameterDict({"ode_up_proj": nn.Parameter(torch.empty(D // 2, p * D)),
                                           "ode_down_proj": nn.Parameter(torch.empty(p * D, D // 2))})
        self.reset_parameters()
        self.cache = None  # (key, inv_freq [max_factor, D/2]) for forwards without gradients

    def reset_parameters(self):
        """The paper's start: W_up Kaiming-uniform(a = sqrt 5), W_down = 0, i.e. NTK with alpha = 2t - 1."""
        nn.init.kaiming_uniform_(self.proj_func.ode_up_proj, a=math.sqrt(5))
        nn.init.zeros_(self.proj_func.ode_down_proj)

    def forward(self, config, t):
        """inv_freq [D/2] fp32 at the integer scaling factor t. With gradients: one solve over [1, t].
        Without: one solve over the grid 1..max_factor, reused until a parameter changes (an in-place
        update bumps its version, a reassignment or .to() its storage)."""
        up, down = self.proj_func.ode_up_proj, self.proj_func.ode_down_proj
        rs = config.rope_scaling
        if t != int(t) or not 1 <= t <= rs["max_factor"]:
            raise ValueError(f"clex: the scaling factor t must be an integer in 1..max_factor={rs['max_factor']}, got {t!r}")
        t = int(t)
        args = (config.head_dim, config.rope_theta, up, down)
        kw = dict(time_dt=rs.get("time_dt", 0.01), act=rs.get("act", "tanh"))
        if torch.is_grad_enabled():
            return clex_inv_freq(*args, max_t=t, **kw)[-1]
        key = (up.data_ptr(), up._version, down.data_ptr(), down._version, str(up.device), args[:2], rs["max_factor"], kw)
        if self.cache is None or self.cache[0] != key:
            self.cache = (key, clex_inv_freq(*args, max_t=rs["max_factor"], **kw))
        return self.cache[1][t - 1]

    def cos_sin(self, config, position_ids, kv_cache=None):
        """cos, sin [B, T, D] fp32 at t = ceil(L / L0) for L = max(position_ids) + 1 (one host read of the reach).
        In training that is the step's t: sample_clex's last position is Lc * t - 1, and train.py sets L0 = Lc.
        Decoding keeps the prompt's t (kept on the cache), so every cached key and every new query share one set of
        frequencies (the original re-rotates the cached keys when t changes)."""
        if kv_cache is not None and kv_cache.length > 0 and getattr(kv_cache, "clex_t", None):
            t = kv_cache.clex_t
        else:
            t = clex_factor(int(position_ids.max()) + 1, original_len(config), config.rope_scaling["max_factor"])
            if kv_cache is not None:
                kv_cache.clex_t = t
        return cos_sin(self(config, t), position_ids)
