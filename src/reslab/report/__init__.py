"""The report toolkit: self-contained HTML pages (`html.Page`, with the one layout every study report
uses), shared matplotlib helpers (`figures`) and the index page over a folder of studies. It imports
no study and no torch: each study's `report.py` builds on it, from the study's folder alone.
`reslab report PATH` is `reslab.studies.build_report`.
"""

from reslab.report.html import Page, build_index

__all__ = ["Page", "build_index"]
