"""The fleet report (docs/report.md): how much of the fleet matches its manifests, what fails
and why, and how the last runs went, as one self-contained HTML page, JSON or mermaid charts.

`model.build_report` computes the numbers (pure); `html.render_html` and `model.report_document`
present them; `mermaid` draws the compact charts of pull-request comments and step summaries.
"""
