"""Sphinx configuration of the book: the README and the executed notebooks as a static site.

Built by ``make book`` (``sphinx-build -W -c book . _build/book``) from the repository root, with
MyST-NB reading the notebooks' stored outputs (never executing them). Everything the pages
load is copied into the build folder, MathJax included, so the site opens from the folder
with no network.
"""

import shutil
from pathlib import Path

import jupyter_server_mathjax

BOOK = Path(__file__).resolve().parent
MATHJAX = Path(jupyter_server_mathjax.__file__).parent / "static"  # MathJax 2.7, from PyPI

project = "tvmlib"
author = "the tvmlib authors"
copyright = "tvmlib authors, MIT licence"

extensions = ["myst_nb", "sphinx_external_toc"]
external_toc_path = str(BOOK / "_toc.yml")
external_toc_exclude_missing = True  # only the README and the numbered notebooks
include_patterns = ["README.md", "notebooks/[0-9]*.ipynb"]  # nothing else is a page
exclude_patterns = [".*", "_build", "data", "figures", "tests", "tvmlib", "configs", "runs"]
suppress_warnings = ["etoc.toctree"]

# Notebooks: the stored outputs, as committed (make notebooks refreshes them).
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # live widgets need a kernel; their stored static fallback is shown
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath", "html_image"]
nb_render_markdown_format = "myst"  # outputs too: their <img> become images Sphinx copies
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = "tvmlib: one- and few-step generative models"
html_theme_options = {"show_toc_level": 2, "use_download_button": False}
html_copy_source = False
html_show_sourcelink = False

# MathJax from the build folder, not a CDN.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {"tex2jax": {"inlineMath": [["\\(", "\\)"]],
                               "displayMath": [["\\[", "\\]"]],
                               "processRefs": False, "processEnvironments": False,
                               # MyST-NB marks notebook pages tex2jax_ignore: typeset .math
                               "processClass": "tex2jax_process|mathjax_process|math|output_area"}}


def _copy_mathjax(app, exception):
    if exception is None and app.builder.format == "html":
        shutil.copytree(MATHJAX, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def setup(app):
    app.connect("build-finished", _copy_mathjax)
