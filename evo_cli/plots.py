"""Pictures of scores: mutagenesis heatmaps, delta histograms and likelihood tracks (matplotlib).

matplotlib is the optional extra ``evo-cli[plot]``; without it ``check_plot_output`` fails with one
line naming the extra. Figures are written by extension: .png, .svg, .pdf, or .html (a PNG embedded
as base64 above the table that was drawn, for a browser). Every function returns the Figure, whose
axes carry a ``gid`` (``heatmap``, ``mean_delta``, ``histogram``, ``track``) so that the drawn
numbers can be read back. No torch here.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from evo_cli.errors import InputError, OptionError
from evo_cli.io.atomic import atomic_open, atomic_path, check_output_path

PLOT_FORMATS = ("png", "svg", "pdf", "html")
PLOT_EXTRA = 'plotting needs matplotlib: pip install "evo-cli[plot]"'
BASES = "ACGT"
PANEL = 100  # positions per heatmap panel: long regions are split into panels of this many
# at most this many heatmap panels (a figure about 5,000 pixels high): longer regions get wider panels,
# and of many regions apart (a BED of exons) the first ones are drawn, the title saying how many
MAX_PANELS = 20
# at most this many histograms in one figure: matplotlib's 10 colours, a legend that fits
MAX_GROUPS = 10
# at most this many table rows in an HTML figure (about 12 MB): a genome's per-position table (E. coli,
# 4.6 million rows) made a page of 600 MB, minutes to write, that no browser opens
MAX_HTML_ROWS = 100_000
DPI = 100
WIDTH = 12.0  # inches
# the kinds of score tables ``evo plot`` draws, by their columns
KINDS = {"mutagenize": {"chrom", "pos", "ref", "alt", "delta"}, "variants": {"chrom", "pos", "alt", "delta"},
         "positions": {"id", "pos", "logprob"}}


def plot_format(path: str | Path) -> str:
    ext = Path(str(path)).suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise OptionError(f"{path}: a plot is .png, .svg, .pdf or .html")
    return ext


def check_plot_output(path: str | Path) -> str:
    """The figure format of ``path``; an InputError naming the extra when matplotlib is missing, or
    when ``path`` cannot be a file (``check_output_path``)."""
    fmt = plot_format(path)
    check_output_path(path)
    _pyplot()
    return fmt


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise InputError(PLOT_EXTRA) from None
    matplotlib.use("Agg", force=False)  # files only: never open a window
    import matplotlib.pyplot as plt

    return plt


def _literal(text: str) -> str:
    """``text`` drawn as written: matplotlib reads a pair of ``$`` as math (a title or sequence id
    holding ``$\\frac{$`` failed the whole figure)."""
    return text.replace("$", r"\$")


def _frame(data):
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data
    from evo_cli.mutagenesis import COLUMNS

    return pd.DataFrame(list(data), columns=[c for c, _ in COLUMNS])


def mutagenesis_matrix(df, gap: int | None = None) -> list[tuple]:
    """Per chrom, or per run of a chrom's positions where ``gap`` is given: ``(chrom, positions, matrix,
    {pos: REF})`` with matrix [4 (A, C, G, T), n] of deltas (NaN at REF and at positions not scored),
    positions consecutive from the first scored to the last. A run ends where the next position is
    ``gap`` or more further on: two regions far apart on one chromosome are not one matrix of every
    position between them (a BED of exons over chr1 would need gigabytes)."""
    import numpy as np

    out = []
    for chrom, part in df.groupby("chrom", sort=False):
        part = part.sort_values("pos", kind="stable")
        pos = part.pos.to_numpy()
        breaks = [0, *(np.flatnonzero(np.diff(pos) >= gap) + 1 if gap else []), len(pos)]
        for a, b in zip(breaks, breaks[1:]):
            run = part.iloc[a:b]
            lo, hi = int(run.pos.min()), int(run.pos.max())
            m = np.full((4, hi - lo + 1), np.nan)
            m[[BASES.index(x) for x in run.alt], (run.pos - lo).to_numpy()] = run.delta.to_numpy()
            out.append((chrom, list(range(lo, hi + 1)), m, dict(zip(run.pos, run.ref))))
    return out


def plot_mutagenesis(data, path: str | Path | None = None, *, title: str = "", panel: int = PANEL):
    """Heatmap of a mutagenesis table (rows of ``mutagenesis.COLUMNS`` or a DataFrame): rows A, C, G, T,
    columns genome positions, a diverging colour map centred at 0 (shared by all panels), the REF
    base marked with a dot, and above each panel the mean delta per position. Regions longer than
    ``panel`` positions are split into panels, each starting at a scored position; panels are
    widened to keep at most ``MAX_PANELS`` for one long region, and of more (regions far apart) the
    first ``MAX_PANELS`` are drawn. Writes ``path`` when given; returns the Figure."""
    import numpy as np

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    df = _frame(data)
    if df.empty:
        raise InputError("nothing to plot: the table has no scored positions")
    # one row per SNV of A, C, G, T: anything else (an indel, a repeated row) has no cell
    bad = df[~df.ref.isin(list(BASES)) | ~df.alt.isin(list(BASES)) | (df.ref == df.alt)]
    repeated = df[df.duplicated(["chrom", "pos", "alt"])]
    for rows, what in ((bad, "is not a SNV of A, C, G and T"), (repeated, "appears twice")):
        if len(rows):
            r = rows.iloc[0]
            raise InputError(f"not a mutagenesis table: {r.chrom}:{r.pos} {r.ref}>{r.alt} {what}")
    parts = []
    # positions per panel: ``panel``, or more where the scored positions would fill more than MAX_PANELS
    scored_positions = df[np.isfinite(df.delta.to_numpy(dtype=float))].drop_duplicates(["chrom", "pos"])
    panel = max(panel, -(-len(scored_positions) // MAX_PANELS))
    # split where no panel could span the gap (panels start at scored positions): the same panels
    matrices = mutagenesis_matrix(df, gap=panel)
    for chrom, positions, m, refs in matrices:
        scored = np.isfinite(m).any(axis=0)
        k = 0
        while scored[k:].any():
            # a panel starts at the next scored position: a gap longer than a panel (between two
            # regions of one contig) is left out instead of drawn as empty panels
            k += int(np.argmax(scored[k:]))
            end = k + 1 + int(np.flatnonzero(scored[k : k + panel])[-1])  # up to the last scored position
            parts.append((chrom, positions[k:end], m[:, k:end], refs))
            k += panel
    if not parts:
        raise InputError("nothing to plot: the table has no scored positions")
    if len(parts) > MAX_PANELS:
        title = "\n".join(filter(None, [title, f"(the first {MAX_PANELS} of {len(parts):,} panels)"]))
        parts = parts[:MAX_PANELS]
    # one scale for every panel, centred at 0; red: less likely than the reference; grey: REF, not scored
    vmax = float(np.nanmax(np.abs(df.delta.to_numpy()))) or 1.0
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.85")
    fig = plt.figure(figsize=(WIDTH, 0.6 + 2.6 * len(parts)), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2 * len(parts), 1, height_ratios=[1, 1.6] * len(parts))
    span = max(len(positions) for _, positions, _, _ in parts)
    heat_axes, tops = [], []
    for i, (chrom, positions, block, refs) in enumerate(parts):
        x0, n = positions[0], len(positions)
        # one mean-delta scale for every panel, as the colour scale is
        top = fig.add_subplot(grid[2 * i], sharey=tops[0] if tops else None)
        tops.append(top)
        # a bar per scored position only: positions without a score (N, gaps between regions) have none
        cols = np.flatnonzero(np.isfinite(block).any(axis=0))
        mean = np.nanmean(block[:, cols], axis=0)
        top.bar([positions[j] for j in cols], mean, width=1.0, color=["#b2182b" if v < 0 else "#2166ac" for v in mean])
        top.axhline(0, color="0.4", lw=0.5)
        # every panel spans as many positions as the longest: cells keep one width
        top.set_xlim(x0 - 0.5, x0 + span - 0.5)
        top.set_ylabel("mean Δ", fontsize=8)
        top.tick_params(labelbottom=False, labelsize=7)
        top.set_gid("mean_delta")
        top.set_title(_literal(f"{chrom}:{x0:,}-{positions[-1]:,}"), fontsize=9, loc="left")
        ax = fig.add_subplot(grid[2 * i + 1], sharex=top)
        im = ax.imshow(np.ma.masked_invalid(block), aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax,
                       interpolation="nearest", extent=(x0 - 0.5, x0 + n - 0.5, 3.5, -0.5))
        xs = [p for p in positions if p in refs]  # the scored positions (their REF is A, C, G or T)
        ax.scatter(xs, [BASES.index(refs[p]) for p in xs], s=min(12, 600 / n), c="black", marker="o",
                   linewidths=0, gid="ref")
        ax.set_yticks(range(4), list(BASES), fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        # whole positions (no 1.5, and a one-position panel ticked at its position)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
        ax.xaxis.get_major_formatter().set_useOffset(False)
        ax.ticklabel_format(axis="x", style="plain")
        ax.set_gid("heatmap")
        heat_axes.append(ax)
    heat_axes[-1].set_xlabel("position (1-based); ● = reference base")
    cbar = fig.colorbar(im, ax=heat_axes, shrink=0.8, pad=0.01)
    cbar.set_label("Δ log-likelihood (ALT − REF)", fontsize=8)
    if title:
        fig.suptitle(_literal(title), fontsize=10)
    if path is not None:
        save(fig, path, df)
    return fig


def plot_histogram(df, path: str | Path | None = None, *, by: str | None = None, title: str = "", bins: int = 50):
    """Histogram of ``delta`` (rows without a delta are left out), one per value of column ``by``
    on shared bins. Writes ``path`` when given; returns the Figure."""
    import numpy as np

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    df = df[df.delta.notna()]
    if df.empty:
        raise InputError("nothing to plot: no scored variants (no delta)")
    if by is not None and by not in df.columns:
        raise InputError(f"--by {by}: no such column (the table has {', '.join(map(str, df.columns))})")
    edges = np.histogram_bin_edges(df.delta.to_numpy(), bins=bins)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=DPI, layout="constrained")
    groups = [(None, df)] if by is None else list(df.groupby(df[by].astype(str), sort=True))
    if len(groups) > MAX_GROUPS:
        raise InputError(f"--by {by}: {len(groups):,} values; a histogram is split into at most {MAX_GROUPS} "
                         f"(choose a column of classes, e.g. a clinical label)")
    for name, part in groups:
        label = _literal(f"{'all' if name is None else name} (n = {len(part):,})")
        # outlines when split: overlapping filled histograms hide each other
        ax.hist(part.delta.to_numpy(), bins=edges, label=label, histtype="step" if by else "stepfilled", lw=1.5)
    ax.axvline(0, color="0.3", lw=0.6)
    ax.set_xlabel("Δ log-likelihood (ALT − REF)")
    ax.set_ylabel("variants")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 variant ticks
    ax.legend(fontsize=8, title=None if by is None else _literal(by))
    ax.set_gid("histogram")
    if title:
        ax.set_title(_literal(title), fontsize=10)
    if path is not None:
        save(fig, path, df)
    return fig


def plot_track(df, path: str | Path | None = None, *, title: str = "", max_panels: int = MAX_PANELS):
    """Per-position log-probability along each sequence (an ``evo score --per-position`` table), one
    panel per id (the first ``max_panels``, the title saying so). Writes ``path`` when given; returns
    the Figure."""
    plt = _pyplot()
    if df.empty:
        raise InputError("nothing to plot: the table has no positions")
    ids = list(dict.fromkeys(df["id"]))
    if len(ids) > max_panels:
        title = "\n".join(filter(None, [title, f"(the first {max_panels} of {len(ids):,} sequences)"]))
        ids = ids[:max_panels]
    fig, axes = plt.subplots(len(ids), 1, figsize=(WIDTH, 0.6 + 2.0 * len(ids)), dpi=DPI, layout="constrained",
                             squeeze=False)
    for ax, (name, part) in zip(axes[:, 0], ((i, df[df["id"] == i]) for i in ids)):
        ax.plot(part.pos.to_numpy(), part.logprob.to_numpy(), lw=0.6, color="#2166ac")
        ax.set_title(_literal(str(name)), fontsize=9, loc="left")
        ax.set_ylabel("log p", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_gid("track")
    axes[-1, 0].set_xlabel("position (1-based)")
    if title:
        fig.suptitle(_literal(title), fontsize=10)
    if path is not None:
        save(fig, path, df)
    return fig


# the metadata keys under which matplotlib writes the time of drawing (None: left out)
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save(fig, path: str | Path, table=None) -> None:
    """Write ``fig`` by extension, atomically; .html embeds a PNG and ``table`` (a DataFrame; its first
    ``MAX_HTML_ROWS`` rows, saying so when there are more)."""
    plt = _pyplot()
    fmt = plot_format(path)
    try:
        if fmt != "html":
            # the same figure gives the same bytes (a rerun, a resumed run): no time stamp in a PDF or
            # SVG, and SVG clip-path ids hashed from a fixed salt instead of a random one
            with atomic_path(path) as tmp, plt.rc_context({"svg.hashsalt": "evo"}):
                fig.savefig(tmp, format=fmt, dpi=DPI, metadata=_NO_DATE.get(fmt))
            return
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        image = base64.b64encode(buf.getvalue()).decode("ascii")
        name = html.escape(Path(str(path)).stem)
        rows = ""
        if table is not None:
            rows = table.head(MAX_HTML_ROWS).to_html(index=False, na_rep="", float_format=lambda v: f"{v:.6g}",
                                                     border=0, classes="scores")
            if len(table) > MAX_HTML_ROWS:
                rows = (f"<p>The first {MAX_HTML_ROWS:,} of {len(table):,} rows; the score file holds them "
                        f"all.</p>\n{rows}")
        with atomic_open(path) as fh:
            fh.write(f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{name}</title>\n"
                     "<style>body{font-family:sans-serif} img{max-width:100%} table.scores{border-collapse:collapse;"
                     "font-size:12px} table.scores td,table.scores th{padding:2px 8px;text-align:right}</style>"
                     f"</head>\n<body>\n<h1>{name}</h1>\n<img alt=\"{name}\" src=\"data:image/png;base64,{image}\">\n"
                     f"{rows}\n</body></html>\n")
    finally:
        plt.close(fig)


def read_scores(path: str | Path):
    """``(kind, DataFrame)`` of a score table (.tsv, .parquet) or VCF (.vcf, .vcf.gz, .bcf): kind is
    ``mutagenize``, ``variants`` or ``positions`` (see ``KINDS``). VCF rows are one per ALT with
    ``delta`` from EVO_DELTA and the record's other one-value INFO fields as columns."""
    import pandas as pd

    if str(path) == "":  # else Path("") is ".": "is a directory"
        raise InputError("no score file given: the path is empty")
    if str(path) == "-":
        raise InputError("-: evo plot reads a score file by name (its extension tells the format), not standard input")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a score file")
    name = path.name.lower()
    if name.endswith((".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")):
        kind, df = _read_vcf(path)
        _check_numbers(path, df)
        return kind, df
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        elif name.endswith((".tsv", ".txt", ".tab", ".tsv.gz", ".txt.gz", ".tab.gz")):  # pandas reads gzip by name
            df = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
        else:
            raise InputError(f"{path}: scores are .tsv, .parquet, .vcf or .vcf.gz (or .tsv.gz)")
    except (OSError, ValueError, EOFError) as err:  # EOFError: a cut .tsv.gz
        raise InputError(f"{path}: cannot read as a table ({err})") from None
    for column in ("delta", "logprob", "pos"):
        if column in df.columns:
            numbers = pd.to_numeric(df[column], errors="coerce")
            text = df[column][numbers.isna() & df[column].notna()]
            if len(text):
                raise InputError(f"{path}: column {column} holds {text.iloc[0]!r}, not a number")
            df[column] = numbers
    _check_numbers(path, df)
    cols = set(df.columns)
    for kind in ("positions", "variants", "mutagenize"):
        if KINDS[kind] <= cols and (kind != "variants" or "status" in cols or "id" in cols):
            return kind, df
    if KINDS["mutagenize"] <= cols:
        return "mutagenize", df
    raise InputError(f"{path}: not a table of evo scores (columns {', '.join(map(str, df.columns))})")


def _check_numbers(path: Path, df) -> None:
    """Positions are present and whole numbers, and deltas finite (or missing): a position of 1.5 or
    none cannot index a heatmap column, and an infinite delta has no histogram bin or colour."""
    import numpy as np

    if "pos" in df.columns and df.pos.isna().any():  # a heatmap column or track point needs its position
        raise InputError(f"{path}: column pos is empty (row {int(np.argmax(df.pos.isna().to_numpy())) + 1})")
    checks = (("pos", lambda v: v.notna() & (v != v.round()), "not a whole number"),
              ("delta", lambda v: np.isinf(v), "not a finite number"))
    for column, bad, what in checks:
        if column in df.columns:
            values = df[column][bad(df[column])]
            if len(values):
                raise InputError(f"{path}: column {column} holds {values.iloc[0]:g}, {what}")


def _read_vcf(path: Path):
    from evo_cli.io.reference import quiet_htslib

    # htslib's warnings about odd lines that score-variants copied from its input (INFO keys the header
    # does not define) say nothing about the plot
    with quiet_htslib():
        return _read_vcf_rows(path)


def _read_vcf_rows(path: Path):
    import pandas as pd
    import pysam

    from evo_cli.mutagenesis import VCF_MARK

    try:
        vf = pysam.VariantFile(str(path))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read as a VCF ({err})") from None
    with vf:
        header = vf.header
        if "EVO_DELTA" not in header.info:
            raise InputError(f"{path}: no EVO_DELTA INFO field; score it first with evo score-variants")
        mutagenesis = any(r.key == VCF_MARK[0] and r.value == VCF_MARK[1] for r in header.records)
        scalar = [k for k, v in header.info.items() if v.number in (1, 0) and not k.startswith("EVO_")]
        rows = []
        for rec in vf:
            try:
                none = (None,) * len(rec.alts or ())
                deltas = rec.info.get("EVO_DELTA", none)
                # pysam raises "Invalid header" on a key the header does not declare, default or not
                alt_lls = rec.info.get("EVO_ALT_LL", none) if "EVO_ALT_LL" in header.info else none
                ref_ll = rec.info.get("EVO_REF_LL") if "EVO_REF_LL" in header.info else None
                extra = [rec.info.get(k) for k in scalar]
                rows.extend((rec.chrom, rec.pos, rec.id, rec.ref, alt, ref_ll, a, d, *extra)
                            for alt, d, a in zip(rec.alts or (), deltas, alt_lls))
            except UnicodeDecodeError:
                # pysam decodes fields as UTF-8 only; score-variants copies an input's other bytes unchanged
                raise InputError(f"{path}: record at position {rec.pos} holds text that is not UTF-8 (in CHROM, ID, "
                                 f"ALT or INFO), which pysam cannot read; plot the .tsv or .parquet output of "
                                 f"score-variants instead") from None
    df = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt", "ref_ll", "alt_ll", "delta", *scalar])
    df["delta"] = pd.to_numeric(df.delta)
    if mutagenesis:
        return "mutagenize", df.drop(columns=["id", *scalar])
    return "variants", df


def plot_scores(scores: str | Path, output: str | Path, *, by: str | None = None, title: str | None = None) -> str:
    """Draw a score file by its kind (heatmap, delta histogram or likelihood track) into ``output``;
    returns the kind."""
    check_plot_output(output)
    kind, df = read_scores(scores)
    title = Path(str(scores)).name if title is None else title
    if by is not None and kind != "variants":
        raise InputError(f"--by splits variant tables; {scores} is a {kind} table")
    if kind == "mutagenize":
        plot_mutagenesis(df, output, title=title)
    elif kind == "variants":
        plot_histogram(df, output, by=by, title=title)
    else:
        plot_track(df, output, title=title)
    return kind
