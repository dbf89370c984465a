"""Half-precision probe of the normalization layers (issue 4, item 1; docs/paper.md §1.3 point 4).

For each norm and each pre-norm scale K, a seeded Gaussian activation tensor of ResNet shape times K is
rounded to float16 and fed to the real layer (``build_norm(...)``, ``.half()``, training mode, momentum 1
so that the running buffer holds exactly this batch's statistic). The same float16 values, cast to
float64, go through an identical layer in float64 (``.double()``): the reference. Both layers see the
same input, so every difference comes from the float16 arithmetic of the layer.

Per (norm, K) row (``COLUMNS``):
    input_nonfinite   fraction of the float16 input that is inf/nan (K too large for float16 itself)
    out_nonfinite     fraction of non-finite float16 outputs
    collapsed         fraction of channels whose float16 output std is < COLLAPSE_RATIO x the reference's
                      (the output silently became ~0 although it is finite)
    out_err           rms(y16 - y64) / rms(y64) over the whole tensor (inf when y16 has inf/nan)
    scale_err_med     median over channels of |s16 - s64| / s64, s = the batch scale estimate read from the
    scale_err_max     layer's running buffer (l2: sqrt(running_var * (n-1)/n), Lp: running_scale); a
                      non-finite s16 counts as inf
    buf_nonfinite     fraction of channels whose float16 running buffer is inf/nan (eval mode would use it)
    eff_scale_err_max max over channels of the relative error of the scale the forward actually divided by,
                      std(x) / std(y) per channel (inf when y is non-finite or zero)

Statistics of "l2" impl "torch" (torch's BatchNorm): on the CPU torch computes them in float32 for a
float16 input and writes them back to the float16 buffers. "l2" impl "lp": ``L2Stats.batch_stats`` forms
d = x - mu and d * d elementwise in float16 (rounded to float16, inf once |d| > 255.9), then
``.mean`` over the batch, which torch's CPU reduction accumulates in float32 and rounds back to float16.
"""
from __future__ import annotations

import math

import torch

from normrepro.errors import ConfigError, choice_error
from normrepro.norms import build_norm

# name -> (build_norm name, extra options)
NORMS: dict[str, tuple[str, dict]] = {
    "l2_torch": ("l2", {"impl": "torch"}),
    "l2_lp": ("l2", {"impl": "lp"}),
    "l1": ("l1", {}),
    "linf": ("linf", {}),
    "topk": ("topk", {}),
}
DEFAULT_NORMS = tuple(NORMS)
DEFAULT_SCALES = (0.001, 0.01, 0.1, 1, 3, 10, 30, 50, 80, 100, 300, 1000, 3000, 10000)
DEFAULT_SHAPE = (128, 64, 8, 8)
COLLAPSE_RATIO = 1e-2
COLUMNS = ("norm", "K", "input_nonfinite", "out_nonfinite", "collapsed", "out_err", "scale_err_med",
           "scale_err_max", "buf_nonfinite", "eff_scale_err_max")


def parse_norms(spec) -> list[str]:
    """``"l2_lp,l1"`` or a list -> checked list of probe norm names (ConfigError on an unknown one)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no norms given; choose from: {', '.join(DEFAULT_NORMS)}")
    for n in names:
        if n not in NORMS:
            raise choice_error("probe norm", n, DEFAULT_NORMS)
    return names


def parse_scales(spec) -> list[float]:
    """The pre-norm scales K from a comma-separated string or a list; ConfigError if not positive."""
    vals = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for v in vals:
        if v == "":
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"bad scale {v!r}: scales must be positive numbers") from None
        if not (f > 0 and math.isfinite(f)):
            raise ConfigError(f"bad scale {v!r}: scales must be positive numbers")
        out.append(f)
    if not out:
        raise ConfigError("no scales given")
    return out


def make_activations(shape=DEFAULT_SHAPE, seed: int = 0, spread: float = 4.0,
                     mean_frac: float = 0.25) -> torch.Tensor:
    """Seeded float64 activations of ``shape`` (N, C, H, W): channel c is N(m_c, sigma_c^2) with sigma_c
    log-uniform in [1/spread, 1] and m_c ~ N(0, (mean_frac sigma_c)^2). Largest sigma is 1, so K * x stays
    below float16's max (65504) up to K = 1e4 for the default shape."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    sigma = torch.exp(-math.log(spread) * torch.rand(c, generator=g, dtype=torch.float64)) if spread > 1 \
        else torch.ones(c, dtype=torch.float64)
    mean = mean_frac * sigma * torch.randn(c, generator=g, dtype=torch.float64)
    view = (1, c) + (1,) * (len(shape) - 2)
    return z * sigma.view(view) + mean.view(view)


def _build(norm: str, c: int) -> torch.nn.Module:
    name, opts = NORMS[norm]
    return build_norm(name, c, momentum=1.0, **opts).train()


def batch_scale(layer: torch.nn.Module, n: int) -> torch.Tensor:
    """The batch's scale estimate (without eps) from the layer's running buffer (momentum 1), in float64."""
    if hasattr(layer, "running_scale"):
        return layer.running_scale.detach().double()
    return (layer.running_var.detach().double() * ((n - 1) / n)).sqrt()


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    err = (a - b).abs() / b.abs()
    return torch.where(torch.isfinite(a), err, torch.full_like(err, math.inf))


def probe_one(norm: str, x: torch.Tensor, K: float) -> dict:
    """One row: the float16 layer vs. the float64 layer on (K * x) rounded to float16."""
    if norm not in NORMS:
        raise choice_error("probe norm", norm, DEFAULT_NORMS)
    c = x.shape[1]
    n = x.numel() // c
    dims = (0,) + tuple(range(2, x.dim()))
    x16 = (x * K).to(torch.float16)
    input_nonfinite = 1.0 - torch.isfinite(x16).double().mean().item()
    x64 = x16.double()

    l16, l64 = _build(norm, c).half(), _build(norm, c).double()
    with torch.no_grad():
        y16 = l16(x16).double()
        y64 = l64(x64)

    finite = torch.isfinite(y16)
    out_nonfinite = 1.0 - finite.double().mean().item()
    ref_std = y64.std(dims)
    std16 = torch.where(finite, y16, torch.zeros_like(y16)).std(dims)
    collapsed = ((std16 < COLLAPSE_RATIO * ref_std) & (ref_std > 0)).double().mean().item()
    if finite.all():
        out_err = ((y16 - y64).pow(2).mean().sqrt() / y64.pow(2).mean().sqrt()).item()
    else:
        out_err = math.inf

    s16, s64 = batch_scale(l16, n), batch_scale(l64, n)
    err = _rel(s16, s64)
    buf_nonfinite = 1.0 - torch.isfinite(s16).double().mean().item()

    xstd = x64.std(dims)
    y16_std = y16.std(dims)  # nan when y16 has inf/nan
    eff16 = torch.where(y16_std > 0, xstd / y16_std, torch.full_like(xstd, math.inf))
    eff16 = torch.where(torch.isfinite(y16_std), eff16, torch.full_like(eff16, math.nan))
    eff_err = _rel(eff16, xstd / y64.std(dims))

    return {
        "norm": norm, "K": float(K), "input_nonfinite": input_nonfinite, "out_nonfinite": out_nonfinite,
        "collapsed": collapsed, "out_err": out_err, "scale_err_med": err.median().item(),
        "scale_err_max": err.max().item(), "buf_nonfinite": buf_nonfinite,
        "eff_scale_err_max": eff_err.max().item(),
    }


def run_probe(norms=DEFAULT_NORMS, scales=DEFAULT_SCALES, shape=DEFAULT_SHAPE, seed: int = 0,
              spread: float = 4.0, progress: bool = False) -> list[dict]:
    """All (norm, K) rows, norms outer, scales inner."""
    norms = parse_norms(norms)
    scales = parse_scales(scales)
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 4) or any(s < 1 for s in shape) or shape[0] * (shape[2] * shape[3] if len(shape) == 4
                                                                           else 1) < 2:
        raise ConfigError(f"bad shape {shape}: want (N, C) or (N, C, H, W) with at least 2 values per channel")
    x = make_activations(shape, seed=seed, spread=spread)
    jobs = [(nm, k) for nm in norms for k in scales]
    it = jobs
    if progress:
        try:
            from tqdm import tqdm
            it = tqdm(jobs, desc="fp16 probe", unit="row")
        except ImportError:
            pass
    return [probe_one(nm, x, k) for nm, k in it]


# ------------------------------------------------------------------------------------------- output
def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        if v == 0:
            return "0"
        if abs(v) >= 1e-2 and abs(v) < 1e4:
            return f"{v:.3g}"
        return f"{v:.2e}"
    return str(v)


def rows_to_csv(rows: list[dict]) -> str:
    """The probe's rows as CSV text."""
    lines = [",".join(COLUMNS)]
    for r in rows:
        lines.append(",".join(r[c] if isinstance(r[c], str) else repr(float(r[c])) for c in COLUMNS))
    return "\n".join(lines) + "\n"


def rows_to_markdown(rows: list[dict], columns=COLUMNS) -> str:
    """The probe's rows as a Markdown table of ``columns``."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r[c]
            cells.append(f"{v:g}" if c == "K" else _fmt(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def first_scale(rows: list[dict], norm: str, pred) -> float | None:
    """Smallest K of ``norm`` whose row satisfies ``pred`` (None if none)."""
    ks = [r["K"] for r in rows if r["norm"] == norm and pred(r)]
    return min(ks) if ks else None


def plot(rows: list[dict], path) -> None:
    """Three panels vs K (log x): non-finite output fraction, collapsed channel fraction, max scale rel. error.
    Written atomically (temp file in the same folder, then os.replace)."""
    from pathlib import Path

    import matplotlib

    from normrepro.utils.io import atomic_savefig
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    cap = 1e3
    for nm in norms:
        rs = sorted((r for r in rows if r["norm"] == nm), key=lambda r: r["K"])
        ks = [r["K"] for r in rs]
        axes[0].plot(ks, [r["out_nonfinite"] for r in rs], marker="o", label=nm)
        axes[1].plot(ks, [r["collapsed"] for r in rs], marker="o", label=nm)
        axes[2].plot(ks, [min(r["scale_err_max"], cap) if not math.isnan(r["scale_err_max"]) else cap for r in rs],
                     marker="o", label=nm)
    axes[0].set_title("fraction of non-finite float16 outputs")
    axes[1].set_title(f"fraction of collapsed channels (std < {COLLAPSE_RATIO:g} x ref)")
    axes[2].set_title(f"max rel. error of the scale in the fp16 buffer (inf -> {cap:g})")
    axes[0].set_ylim(-0.05, 1.05)
    axes[1].set_ylim(-0.05, 1.05)
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("pre-norm scale K")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)


SUMMARY_COLUMNS = ("norm", "K", "out_nonfinite", "collapsed", "out_err", "scale_err_med", "scale_err_max",
                   "buf_nonfinite")


def _k(v, kmax) -> str:
    return f"none up to K = {kmax:g}" if v is None else f"from K = {v:g}"


def summary_lines(rows: list[dict]) -> list[str]:
    """Findings computed from the rows (no hand-written numbers)."""
    out = []
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    kmax = max(r["K"] for r in rows)
    bad_in = [r["K"] for r in rows if r["input_nonfinite"] > 0]
    if bad_in:
        out.append(f"- The float16 input itself overflowed from K = {min(bad_in):g} (those rows say nothing about "
                   "the norm and are left out below).")
    for nm in norms:
        rs = [r for r in rows if r["norm"] == nm and r["input_nonfinite"] == 0]
        if not rs:
            continue
        nonfin = first_scale(rs, nm, lambda r: r["out_nonfinite"] > 0)
        coll = first_scale(rs, nm, lambda r: r["collapsed"] > 0)
        coll_all = first_scale(rs, nm, lambda r: r["collapsed"] >= 1)
        buf = first_scale(rs, nm, lambda r: r["buf_nonfinite"] > 0)
        ok = [r for r in rs if r["out_nonfinite"] == 0 and r["collapsed"] == 0 and r["buf_nonfinite"] == 0]
        if ok:
            worst = max(ok, key=lambda r: r["scale_err_max"])
            lo, hi = min(r["K"] for r in ok), max(r["K"] for r in ok)
            health = (f"over its {len(ok)} healthy rows (K {lo:g}..{hi:g}) max scale rel. error "
                      f"{_fmt(worst['scale_err_max'])} (at K = {worst['K']:g}), max output rel. error "
                      f"{_fmt(max(r['out_err'] for r in ok))}")
        else:
            health = "no healthy row"
        every = "" if coll is None else f" (all channels {_k(coll_all, kmax)})"
        out.append(f"- **{nm}**: non-finite outputs: {_k(nonfin, kmax)}; collapsed channels: {_k(coll, kmax)}"
                   f"{every}; inf/nan float16 running buffer: {_k(buf, kmax)}; {health}.")
    return out


def render_markdown(rows: list[dict], command: str, env: dict, shape, seed: int, spread: float) -> str:
    """The probe's Markdown report: table, command, machine, shape, seed."""
    lines = [
        "# Float16 probe of the normalization layers",
        "",
        "Issue 4, item 1; docs/paper.md §1.3 point 4 (L1 BN trains fully in fp16, L2 BN in fp16 diverged).",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        "## Setup",
        "",
        f"Activations of shape {tuple(shape)} (n = {math.prod(shape) // shape[1]} values per channel), seed "
        f"{seed}: channel c is Gaussian with std sigma_c log-uniform in [1/{spread:g}, 1] and mean "
        "~ N(0, (0.25 sigma_c)^2). For each pre-norm scale K the tensor K*x is rounded to float16 and fed to the "
        "real layer (`build_norm(..., momentum=1.0).half()`, training mode, affine weight 1 / bias 0). The "
        "reference is the same layer in float64 (`.double()`) on the same float16 values cast to float64, so "
        "every difference comes from the layer's float16 arithmetic.",
        "",
        "Norms: `l2_torch` = `build_norm('l2', impl='torch')` (torch's BatchNorm: on this CPU torch computes the "
        "batch statistics of a float16 input in float32 internally and writes them to the float16 running "
        "buffers); `l2_lp` = `build_norm('l2', impl='lp')`, the paper's naive float16 L2: "
        "`L2Stats.batch_stats` forms d = x - mu and d*d elementwise in float16 (each square rounded to float16, "
        "so inf once |d| > 255.9), then `.mean()` over the batch, which torch's CPU reduction accumulates in "
        "float32 and rounds back to float16 (the issue's \"squares in fp16 with an fp32 accumulator\"); "
        "`l1`, `linf`, `topk` (k = 10): this package's Lp layers, statistics in float16 (means likewise "
        "accumulated in float32 by torch and rounded to float16).",
        "",
        "Columns: `out_nonfinite` fraction of inf/nan outputs; `collapsed` fraction of channels whose float16 "
        f"output std is below {COLLAPSE_RATIO:g} x the reference's; `out_err` rms(y16 - y64) / rms(y64) "
        "(inf if any output is non-finite); `scale_err_med` / `scale_err_max` median / max over channels of "
        "the relative error of the batch scale estimate read from the layer's float16 running buffer "
        "(momentum 1, so the buffer holds this batch's statistic; L2: sqrt(running_var (n-1)/n), Lp: "
        "running_scale; inf when the buffer is inf); `buf_nonfinite` fraction of channels with an inf/nan "
        "float16 running buffer (what eval mode would divide by). The CSV also has `input_nonfinite` and "
        "`eff_scale_err_max` (error of the scale the forward actually used, std(x)/std(y) per channel).",
        "",
        "## Findings",
        "",
        *summary_lines(rows),
        "",
        "How to read it (mechanisms; the numbers are in the lines above and the table): the naive float16 L2 "
        "(`l2_lp`) gives no inf/nan outputs: a channel's variance becomes inf as soon as one |x - mu| passes "
        "255.9, and its normalized output (x - mu)/inf is silently exactly 0 (plus beta): the channel "
        "collapses. torch's BatchNorm (`l2_torch`) keeps a correct float16 training output on the CPU "
        "(float32 statistics internally), but its float16 `running_var` overflows once a channel's variance "
        "passes 65504 (std > 256), so a `.half()` model would break in eval mode. At the small end both L2 "
        "variants store a variance (units x^2) that for std ~1e-3 is ~1e-6, subnormal in float16 (smallest "
        "normal 6.1e-5), which costs precision in the stored scale; the Lp layers store the scale itself "
        "(units x). L1, L-inf and Top-k need no squares, so their float16 statistics stay finite as long as "
        "the input is. Rows whose K differ by a power of two (e.g. 10/80, 50/100) give identical errors: "
        "scaling by 2^k is exact in float16.",
        "",
        "Limits: one synthetic Gaussian batch per row, CPU only (CUDA kernels may accumulate differently), "
        "forward statistics only (no backward, no training run); every reduction is torch's CPU mean, which "
        "accumulates float16 in float32, so the paper's pure-fp16-accumulator L1 run is not reproduced here.",
        "",
        "## Table",
        "",
        rows_to_markdown(rows, SUMMARY_COLUMNS),
        "Plot: `fp16_probe.png`; all columns: `fp16_probe.csv`.",
        "",
    ]
    return "\n".join(lines)


def write_results(rows: list[dict], out_dir, stem: str, command: str, env: dict, shape, seed: int,
                  spread: float) -> list:
    """Atomically write ``stem``.csv, .md and .png into ``out_dir``; returns the paths."""
    from pathlib import Path

    from normrepro.utils.io import atomic_write_text

    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    atomic_write_text(paths[0], rows_to_csv(rows))
    atomic_write_text(paths[1], render_markdown(rows, command, env, shape, seed, spread))
    plot(rows, paths[2])
    return paths
