"""Paths as notebooks print them: never a machine's absolute path."""

from tvmlib.utils.paths import repo_root, shown, strip_absolute


def test_shown_is_repository_relative_or_a_bare_name(tmp_path):
    assert shown(repo_root() / "figures" / "03_x.json") == "figures/03_x.json"
    assert shown(tmp_path / "figures" / "03_x.json") == ".../03_x.json"


def test_strip_absolute_keeps_names_urls_and_relative_paths():
    cmd = "python -m a --out /root/out/b_mixed.json --set x=1 ../figures/y.json"
    assert strip_absolute(cmd) == "python -m a --out .../b_mixed.json --set x=1 ../figures/y.json"
    assert strip_absolute("see https://github.com/a/b and ~/data/x") == (
        "see https://github.com/a/b and ~/data/x")
    assert strip_absolute('"/tmp/nbrun/figures/x.json"') == '".../x.json"'
