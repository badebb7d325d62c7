"""The HTML page builder: formatting helpers, escaping, embedded figures, well-formed and self-contained
output, and the index over a folder of studies."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest
from matplotlib.figure import Figure

from reslab.report.html import Link, Page, build_index, fmt_count, fmt_mean_std, fmt_pct

VOID = {"meta", "img", "br", "hr", "input", "link"}


class TagChecker(HTMLParser):
    """Checks every non-void tag is closed in order, and collects attributes that load resources."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.sources = [], [], []

    def handle_starttag(self, tag, attrs):
        self.sources += [v for k, v in attrs if k in ("src", "href")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _png() -> bytes:
    import io

    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=30)
    return buf.getvalue()


def test_formatting_helpers():
    assert fmt_pct(0.0612) == "6.12%" and fmt_pct(1.0, digits=0) == "100%"
    assert fmt_pct(None) == fmt_pct(float("nan")) == "—"
    assert fmt_mean_std(0.1234, 0.0056) == "12.34 ± 0.56%"
    assert fmt_mean_std(0.1234, None) == "12.34%"
    assert fmt_mean_std(3.14159, 0.5, digits=1, pct=False) == "3.1 ± 0.5"
    assert fmt_count(272474) == "0.27M" and fmt_count(8400) == "8.4K" and fmt_count(12) == "12"


def test_page_is_well_formed_self_contained_and_escaped(tmp_path):
    png = _png()
    page = (
        Page("<script>alert(1)</script> & co", "sub <b>title</b>")
        .verdict("shown", "a < b & c", "good", ["note 1"])
        .heading("Section")
        .paragraph("x < y")
        .facts({"depths": "20, 56", "a<b": 1})
        .figure(png, "the caption")
        .table(
            ["arch", "error"], [["plain", "5.00%"], [Link("run", "runs/a b.html"), ["s0", "s1"]]]
        )
    )
    text = page.write(tmp_path / "p.html").read_text()
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    assert "<b>title</b>" not in text and "a &lt; b &amp; c" in text

    checker = TagChecker()
    checker.feed(text)
    assert checker.errors == [] and checker.stack == []
    # nothing is loaded from outside the file: only the data URI and the relative link
    assert [s.split(",")[0] for s in checker.sources] == ["data:image/png;base64", "runs/a b.html"]
    assert not re.search(r"@import|url\(|<link", text)
    # the embedded figure is byte-identical to the PNG given
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', text)[1]
    assert base64.b64decode(uri) == png
    assert '<td class="num">5.00%</td>' in text and "<td>s0<br>s1</td>" in text


def test_page_rejects_bad_input(tmp_path):
    page = Page("t")
    with pytest.raises(ValueError, match="not a PNG"):
        page.figure(b"GIF89a...", "x")
    with pytest.raises(ValueError, match="row has 1 cells, header has 2"):
        page.table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="tone must be one of"):
        page.verdict("x", "y", tone="purple")
    with pytest.raises(ValueError, match="heading level"):
        page.heading("x", level=1)


def test_build_index_links_every_report(tmp_path):
    for name, status in (("degradation/a", "shown"), ("degradation/b", "not_shown")):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        Page(name).write(folder / "report.html")
        (folder / "summary.json").write_text(
            f'{{"study": "degradation", "verdict": {{"status": "{status}", "text": "because {name}"}}}}'
        )
    (tmp_path / "loose").mkdir()  # a folder without a report is not listed
    text = build_index(tmp_path).read_text()
    checker = TagChecker()
    checker.feed(text)
    assert checker.sources == ["degradation/a/report.html", "degradation/b/report.html"]
    for src in checker.sources:
        assert (tmp_path / src).is_file()
    assert "not shown" in text and "not_shown" not in text  # the status in words, not its key
    assert "because degradation/b" in text and "loose" not in text
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_index(tmp_path / "missing")


def test_index_shows_each_studys_own_status_words_and_the_single_training_runs(tmp_path):
    from reslab.studies import status_label

    assert status_label("degradation", "residual_degrades_too") == "residual degrades too"
    assert status_label("lesion", "shown") == "ensemble-like: shown"
    assert status_label("nosuch", "some_key") == "some key"
    study = tmp_path / "degradation" / "d"
    (study / "runs" / "plain-4-s0").mkdir(parents=True)
    (study / "study.json").write_text('{"study": "degradation"}')
    (study / "runs" / "plain-4-s0" / "config.json").write_text('{"model": "plainmlp-4"}')
    Page("d").write(study / "report.html")
    verdict = '{"status": "residual_degrades_too", "text": "t"}'
    (study / "summary.json").write_text(f'{{"study": "degradation", "verdict": {verdict}}}')
    run = tmp_path / "resmlp-4-digits-s0"  # what `reslab train` leaves
    run.mkdir()
    (run / "config.json").write_text('{"model": "resmlp-4", "data": "digits"}')
    (run / "summary.json").write_text(
        '{"status": "completed", "steps": 30, "final_test_error": 0.0845}'
    )
    (run / "metrics.csv").write_text("kind,step\n")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text('{"model": "resnet20"}')
    text = build_index(tmp_path, status_label).read_text()
    checker = TagChecker()
    checker.feed(text)
    assert "resmlp-4-digits-s0/metrics.csv" in checker.sources
    assert "residual degrades too" in text and "8.45%" in text and "unfinished" in text
    assert "plain-4-s0" not in text  # a study's runs are its report's business
