"""Pictures: the numbers drawn equal the table (read back from the figure), PNG size, HTML, ``evo plot``."""

from __future__ import annotations

import base64
import struct
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from evo_cli import plots

from .conftest import CONFORMANCE, DATA
from .test_cli_score_variants import evo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = CONFORMANCE / "evo2" / "tiny_a"
FA = DATA / "brca1" / "GRCh37_chr17_41100001-41300000.fa"
CHROM = "GRCh37_chr17_41100001_41300000"
SNVS = DATA / "brca1" / "brca1_sge_first48.region.vcf"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 12-position mutagenesis table (TSV) and its VCF."""
    tmp = tmp_path_factory.mktemp("scan")
    for out in ("scan.tsv", "scan.vcf.gz"):
        code, _, err = evo("mutagenize", "--fasta", FA, "--region", f"{CHROM}:97718-97729", "-m", TINY,
                           "--window", 48, "-o", tmp / out)
        assert code == 0, err
    return tmp / "scan.tsv", tmp / "scan.vcf.gz"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _heatmaps(fig):
    return [ax for ax in fig.axes if ax.get_gid() == "heatmap"]


def test_heatmap_arrays_equal_the_table(scan, tmp_path):
    df = pd.read_csv(scan[0], sep="\t")
    fig = plots.plot_mutagenesis(df, panel=5)  # 12 positions: panels of 5, 5 and 2
    heat, tracks = _heatmaps(fig), [ax for ax in fig.axes if ax.get_gid() == "mean_delta"]
    assert len(heat) == len(tracks) == 3
    drawn = {}
    for ax in heat:
        img = ax.images[0]
        arr = img.get_array()
        x0, x1, _, _ = img.get_extent()
        positions = np.arange(round(x0 + 0.5), round(x1 + 0.5))
        assert arr.shape == (4, len(positions))
        for j, p in enumerate(positions):
            for i, base in enumerate("ACGT"):
                drawn[(p, base)] = None if arr.mask[i, j] else float(arr[i, j])
        # the REF marks sit on the REF rows
        marks = ax.collections[0].get_offsets()
        refs = df.groupby("pos").ref.first()
        assert [(int(x), "ACGT"[int(y)]) for x, y in marks] == [(p, refs[p]) for p in positions]
        # colour scale centred at 0
        assert img.norm.vmin == -img.norm.vmax and img.get_cmap().name == "RdBu"
    table = {(r.pos, r.alt): r.delta for r in df.itertuples()}
    assert {k: v for k, v in drawn.items() if v is not None} == table
    assert all(drawn[(p, ref)] is None for p, ref in df.groupby("pos").ref.first().items())
    heights = [b.get_height() for ax in tracks for b in ax.patches]
    assert np.allclose(heights, df.groupby("pos").delta.mean().to_numpy(), atol=0, rtol=1e-12)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_png_svg_pdf_html_outputs(scan, tmp_path):
    df = pd.read_csv(scan[0], sep="\t")
    fig = plots.plot_mutagenesis(df, tmp_path / "scan.png", panel=5)
    w, h = fig.get_size_inches() * fig.dpi
    assert png_size(tmp_path / "scan.png") == (round(w), round(h)) == (1200, 840)
    plots.plot_mutagenesis(df, tmp_path / "scan.svg")
    svg = (tmp_path / "scan.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    plots.plot_mutagenesis(df, tmp_path / "scan.pdf")
    assert (tmp_path / "scan.pdf").read_bytes()[:5] == b"%PDF-"
    plots.plot_mutagenesis(df, tmp_path / "scan.html")

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.rows, self.cells, self.tags = [], 0, [], []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img", "br"):  # void elements have no end tag
                self.tags.append(tag)
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            if tag == "tr":
                self.rows += 1

        def handle_endtag(self, tag):
            assert self.tags.pop() == tag  # well nested

    page = Page()
    page.feed((tmp_path / "scan.html").read_text())
    page.close()
    assert page.tags == [] and len(page.images) == 1 and page.rows == len(df) + 1  # header + one per variant
    assert page.images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(page.images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_evo_plot_every_kind(scan, tmp_path):
    # a mutagenesis VCF: the heatmap
    code, _, err = evo("plot", scan[1], "-o", tmp_path / "vcf.png")
    assert code == 0 and "(mutagenize)" in err, err
    # score-variants: histogram split by a VCF INFO field and by a table column
    code, _, err = evo("score-variants", "--vcf", SNVS, "--fasta", FA, "-m", TINY, "--window", 48,
                       "-o", tmp_path / "sv.vcf.gz")
    assert code == 0, err
    code, _, err = evo("plot", tmp_path / "sv.vcf.gz", "--by", "CONSEQUENCE", "-o", tmp_path / "hist.png")
    assert code == 0 and "(variants)" in err, err
    kind, df = plots.read_scores(tmp_path / "sv.vcf.gz")
    fig = plots.plot_histogram(df, by="CONSEQUENCE")
    ax = fig.axes[0]
    edges = np.histogram_bin_edges(df.delta, bins=50)
    for patch, (name, part) in zip(ax.patches, df.groupby("CONSEQUENCE")):
        counts = np.histogram(part.delta, bins=edges)[0]
        xy = patch.get_xy()  # a stepfilled outline: the heights are its y values at the bin edges
        assert np.allclose(sorted(set(np.round(xy[:, 1], 9)) - {0}), sorted(set(counts) - {0}))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"{name} (n = {len(part)})" for name, part in df.groupby("CONSEQUENCE")]
    code, _, err = evo("plot", tmp_path / "sv.vcf.gz", "--by", "NOPE", "-o", tmp_path / "x.png")
    assert code == 1 and "--by NOPE: no such column" in err
    # one histogram per variant: an unreadable legend over the plot, colours repeating after 10
    code, _, err = evo("plot", tmp_path / "sv.vcf.gz", "--by", "pos", "-o", tmp_path / "x.png")
    assert code == 1 and err.strip() == (f"evo: error: --by pos: {df.pos.nunique()} values; a histogram is split "
                                         "into at most 10 (choose a column of classes, e.g. a clinical label)")
    assert not (tmp_path / "x.png").exists()
    # evo score --per-position: a likelihood track
    seqs = tmp_path / "s.fa"
    seqs.write_text(">a\nACGTTGCAAGGTACGATCGA\n>b\nTTGACAGGCA\n")
    code, _, err = evo("score", "--fasta", seqs, "-m", TINY, "-o", tmp_path / "s.tsv", "--per-position",
                       tmp_path / "p.parquet")
    assert code == 0, err
    code, _, err = evo("plot", tmp_path / "p.parquet", "-o", tmp_path / "track.svg")
    assert code == 0 and "(positions)" in err, err
    _, pos = plots.read_scores(tmp_path / "p.parquet")
    fig = plots.plot_track(pos)
    for ax, (name, part) in zip(fig.axes, pos.groupby("id", sort=False)):
        assert np.array_equal(ax.lines[0].get_xydata(), part[["pos", "logprob"]].to_numpy())
    code, _, err = evo("plot", tmp_path / "s.fa", "-o", tmp_path / "x.png")
    assert code == 1 and "scores are .tsv, .parquet, .vcf or .vcf.gz" in err


def _table(positions, chrom="c"):
    """A mutagenesis table with a known delta per (position, ALT)."""
    rows = []
    for p in positions:
        ref = "ACGT"[p % 4]
        rows += [(chrom, p, ref, a, -1.0, -1.0, p / 1000 - 0.25 + "ACGT".index(a) / 100) for a in "ACGT" if a != ref]
    return pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt", "ref_ll", "alt_ll", "delta"])


def test_heatmap_of_a_region_with_gaps(tmp_path):
    """An unscored position inside a region (an N) and a second region of the contig far away: each
    panel starts at a scored position, bars and REF marks only at scored positions, no warning, and
    one mean-delta scale for all panels."""
    import warnings

    import matplotlib.pyplot as plt

    scored = [p for p in range(1, 11) if p != 5] + list(range(500, 504))
    df = _table(scored)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would reach the user's terminal
        fig = plots.plot_mutagenesis(df, tmp_path / "gaps.png")
    heat, tops = _heatmaps(fig), [ax for ax in fig.axes if ax.get_gid() == "mean_delta"]
    assert [tuple(ax.images[0].get_extent()[:2]) for ax in heat] == [(0.5, 10.5), (499.5, 503.5)]
    assert [t.get_title(loc="left") for t in tops] == ["c:1-10", "c:500-503"]
    bars = [(b.get_x() + b.get_width() / 2, b.get_height()) for ax in tops for b in ax.patches]
    mean = df.groupby("pos").delta.mean()
    assert [x for x, _ in bars] == scored and np.allclose([h for _, h in bars], mean.loc[scored], atol=1e-12)
    assert [int(x) for ax in heat for x, _ in ax.collections[0].get_offsets()] == scored
    assert tops[0].get_ylim() == tops[1].get_ylim()
    plt.close(fig)
    for positions in ([7, 8, 9], [5]):
        fig = plots.plot_mutagenesis(_table(positions))
        fig.canvas.draw()
        ax = _heatmaps(fig)[0]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == positions  # genome positions: no 7.5, no 4.6 4.7 ...
        plt.close(fig)
    assert png_size(tmp_path / "gaps.png")[1] == round((0.6 + 2.6 * 2) * plots.DPI)
    plt.close(fig)


def test_heatmap_panels_are_bounded():
    """A long region gets wider panels rather than a figure past matplotlib's 2^16-pixel limit (a
    whole 30 kb record took minutes, then failed); of many regions apart the first panels are drawn
    and the title says so."""
    import matplotlib.pyplot as plt

    fig = plots.plot_mutagenesis(_table(range(1, 2101)))
    heat = _heatmaps(fig)
    assert len(heat) == 20 == plots.MAX_PANELS
    spans = [tuple(ax.images[0].get_extent()[:2]) for ax in heat]
    assert spans[0] == (0.5, 105.5) and spans[-1] == (1995.5, 2100.5)  # 105 positions a panel, all drawn
    assert fig.get_size_inches()[1] * fig.dpi < 2**16
    plt.close(fig)
    fig = plots.plot_mutagenesis(_table([p for k in range(25) for p in range(1000 * k + 1, 1000 * k + 4)]), title="t")
    assert len(_heatmaps(fig)) == 20 and fig.get_suptitle() == "t\n(the first 20 of 25 panels)"
    plt.close(fig)


def test_histogram_counts_and_track_panels_say_what_is_drawn():
    """Histogram ticks are whole variants; a track of more sequences than panels says it shows the first."""
    import matplotlib.pyplot as plt

    df = pd.DataFrame({"chrom": "c", "pos": range(1, 8), "alt": "A", "delta": [-0.3, -0.1, 0.0, 0.05, 0.1, 0.2, 0.4]})
    fig = plots.plot_histogram(df, by=None)
    fig.canvas.draw()
    ticks = fig.axes[0].get_yticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    plt.close(fig)
    pos = pd.DataFrame({"id": [f"s{i}" for i in range(5) for _ in range(3)], "pos": [2, 3, 4] * 5, "logprob": -1.0})
    fig = plots.plot_track(pos, title="p", max_panels=3)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["s0", "s1", "s2"]
    assert fig.get_suptitle() == "p\n(the first 3 of 5 sequences)"
    plt.close(fig)


def test_dollar_signs_are_drawn_as_written(tmp_path):
    """Titles, contig and sequence ids and --by values are text, not matplotlib math: a pair of $
    (``$\\frac{$``) failed the figure with "ValueError: \\frac{"."""
    odd = r"x$\frac{$y"
    fig = plots.plot_mutagenesis(_table([1, 2], chrom=odd), tmp_path / "m.png", title=odd)
    assert fig.get_suptitle() == r"x\$\frac{\$y"  # an escaped $ is drawn as a $
    pos = pd.DataFrame({"id": odd, "pos": [2, 3], "logprob": [-1.0, -2.0]})
    plots.plot_track(pos, tmp_path / "t.png", title=odd)
    df = pd.DataFrame({"chrom": "c", "pos": [1, 2], "alt": "A", "delta": [0.1, -0.1], "label": [odd, "b"]})
    plots.plot_histogram(df, tmp_path / "h.svg", by="label", title=odd)
    assert all((tmp_path / f).stat().st_size > 0 for f in ("m.png", "t.png", "h.svg"))


def test_evo_plot_refuses_tables_it_cannot_draw(tmp_path):
    """A table that is not one SNV per row of A, C, G, T (an indel, a repeated row), or a delta that
    is not a number: one line saying what (an indel was "ValueError: substring not found", a
    repeated row was drawn with one of its values), and no figure."""
    head = "chrom\tpos\tref\talt\tdelta\n"
    cases = {"indel": ("c\t1\tA\tAT\t0.1\nc\t2\tC\tG\t0.2\n",
                       "not a mutagenesis table: c:1 A>AT is not a SNV of A, C, G and T"),
             "twice": ("c\t1\tA\tC\t0.1\nc\t1\tA\tC\t0.3\n", "not a mutagenesis table: c:1 A>C appears twice"),
             "text": ("c\t1\tA\tC\tabc\n", "{path}: column delta holds 'abc', not a number"),
             # were "IndexError: arrays used as indices must be of integer ..." and, for a variants table,
             # "ValueError: autodetected range of [inf, inf] is not finite"
             "half": ("c\t1.5\tA\tC\t0.1\n", "{path}: column pos holds 1.5, not a whole number"),
             "inf": ("c\t1\tA\tC\tinf\n", "{path}: column delta holds inf, not a finite number"),
             "nopos": ("c\t2\tA\tC\t0.1\nc\t\tA\tG\t0.2\n", "{path}: column pos is empty (row 2)")}
    for name, (rows, message) in cases.items():
        path = tmp_path / f"{name}.tsv"
        path.write_text(head + rows)
        code, _, err = evo("plot", path, "-o", tmp_path / f"{name}.png")
        assert code == 1 and err.strip() == "evo: error: " + message.format(path=path), err
        assert not (tmp_path / f"{name}.png").exists()


def test_evo_plot_of_a_vcf_with_bytes_outside_utf8_is_one_line(tmp_path, capfd):
    """score-variants copies a Latin-1 byte of its input VCF unchanged; pysam decodes fields as UTF-8
    only, and plotting that output ended in "UnicodeDecodeError" (a bug's message) after htslib's
    warnings about the undefined INFO key. Now one line saying what and what to plot instead."""
    vcf = tmp_path / "scored.vcf"
    vcf.write_bytes(b"##fileformat=VCFv4.2\n##contig=<ID=c1>\n"
                    b'##INFO=<ID=EVO_DELTA,Number=A,Type=Float,Description="d">\n'
                    b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                    b"c1\t5\trs\xe91\tA\tG\t.\t.\tNOTE=x;EVO_DELTA=0.5\n")
    code, _, err = evo("plot", vcf, "-o", tmp_path / "p.png")
    assert code == 1 and err == (f"evo: error: {vcf}: record at position 5 holds text that is not UTF-8 (in CHROM, "
                                 "ID, ALT or INFO), which pysam cannot read; plot the .tsv or .parquet output of "
                                 "score-variants instead\n")
    assert capfd.readouterr().err == "" and not (tmp_path / "p.png").exists()
    # without EVO_ALT_LL / EVO_REF_LL declared (a VCF not written by evo): pysam's "Invalid header" ended it
    vcf.write_bytes(vcf.read_bytes().replace(b"rs\xe91", b"rs1"))
    code, _, err = evo("plot", vcf, "-o", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 0, err


def test_evo_plot_of_a_folder_or_device_says_what_it_is(tmp_path):
    """A folder and /dev/null were both "no such file"."""
    code, _, err = evo("plot", tmp_path, "-o", tmp_path / "p.png")
    assert code == 1 and err == f"evo: error: {tmp_path}: is a directory, expected a score file\n"
    code, _, err = evo("plot", "/dev/null", "-o", tmp_path / "p.png")
    assert code == 1 and err == "evo: error: /dev/null: scores are .tsv, .parquet, .vcf or .vcf.gz (or .tsv.gz)\n"
    code, _, err = evo("plot", tmp_path / "missing.tsv", "-o", tmp_path / "p.png")
    assert code == 1 and err == f"evo: error: {tmp_path / 'missing.tsv'}: no such file\n"
    # were ".: is a directory, expected a score file" and "-: no such file"
    code, _, err = evo("plot", "", "-o", tmp_path / "p.png")
    assert code == 1 and err == "evo: error: no score file given: the path is empty\n"
    code, _, err = evo("plot", "-", "-o", tmp_path / "p.png")
    assert code == 1 and err == ("evo: error: -: evo plot reads a score file by name (its extension tells the "
                                 "format), not standard input\n")


@pytest.mark.parametrize("ext", ["svg", "pdf", "png", "html"])
def test_a_figure_drawn_twice_has_the_same_bytes(ext, tmp_path, monkeypatch):
    """A rerun or a resumed run draws the same file: no time stamp (PDF CreationDate, SVG dc:date) and
    no random SVG clip-path ids."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)  # matplotlib's own switch; users do not set it
    df = pd.DataFrame([("c", p, "A", alt, -1.0, -1.0 + d, d) for p, d in ((1, 0.1), (2, -0.2)) for alt in "CGT"],
                      columns=["chrom", "pos", "ref", "alt", "ref_ll", "alt_ll", "delta"])
    (tmp_path / "1").mkdir(), (tmp_path / "2").mkdir()
    plots.plot_mutagenesis(df, tmp_path / "1" / f"scan.{ext}")
    first = (tmp_path / "1" / f"scan.{ext}").read_bytes()
    clock = __import__("time").time()
    monkeypatch.setattr("time.time", lambda: clock + 3600)  # an hour later
    import datetime as dt

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.fromtimestamp(clock + 3600, tz)

        @classmethod
        def today(cls):
            return cls.now()

    monkeypatch.setattr(dt, "datetime", Later)
    plots.plot_mutagenesis(df, tmp_path / "2" / f"scan.{ext}")
    assert (tmp_path / "2" / f"scan.{ext}").read_bytes() == first


def test_an_html_figure_embeds_a_bounded_table(tmp_path, monkeypatch):
    """A genome's table is not copied whole into the page (600 MB for E. coli per position): its first
    MAX_HTML_ROWS rows, and a line saying how many there are."""
    monkeypatch.setattr(plots, "MAX_HTML_ROWS", 7)
    df = pd.DataFrame({"id": ["s"] * 30, "pos": range(2, 32), "logprob": np.linspace(-2, -1, 30)})
    plots.plot_track(df, tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text()
    assert page.count("<tr") == 1 + 7 and "The first 7 of 30 rows; the score file holds them all." in page
    plots.plot_track(df.head(7), tmp_path / "u.html")
    page = (tmp_path / "u.html").read_text()
    assert page.count("<tr") == 1 + 7 and "The first" not in page


def test_heatmap_of_regions_far_apart_on_one_contig():
    """Two regions 2 Gb apart on one contig (a BED of exons over a chromosome): only the scored
    positions' columns are built (a dense 4 x 2e9 matrix needed 60 GiB), and the panels are the same."""
    import matplotlib.pyplot as plt

    fig = plots.plot_mutagenesis(_table([1, 2, 3, 2_000_000_001, 2_000_000_002]))
    tops = [ax for ax in fig.axes if ax.get_gid() == "mean_delta"]
    assert [t.get_title(loc="left") for t in tops] == ["c:1-3", "c:2,000,000,001-2,000,000,002"]
    assert [ax.images[0].get_array().shape for ax in _heatmaps(fig)] == [(4, 3), (4, 2)]
    plt.close(fig)


def test_evo_plot_of_a_truncated_gzip_table_is_an_error(tmp_path):
    """pandas raises EOFError on a cut .tsv.gz, which click takes for Ctrl-D: "evo: interrupted", exit 130."""
    import gzip

    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(gzip.compress(b"chrom\tpos\tref\talt\tdelta\n" + b"c\t1\tA\tC\t0.1\n" * 200)[:40])
    code, _, err = evo("plot", path, "-o", tmp_path / "p.png")
    assert code == 1 and err.startswith(f"evo: error: {path}: cannot read as a table (") and err.count("\n") == 1, err
