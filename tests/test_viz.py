"""Figures saved by tvmlib.utils.viz.save are readable at notebook width: dpi >= 100 and at most 8
panels (colorbars not counted); anything else is refused with an error naming the figure."""

import matplotlib.pyplot as plt
import pytest

from tvmlib.utils import viz


def test_save_writes_a_readable_figure(tmp_path):
    fig, axes = viz.grid(2, 4)
    sc = axes[0, 0].scatter([0, 1], [1, 0], c=[0, 1])
    fig.colorbar(sc, ax=axes[0, 0])  # a colorbar is not a panel
    axes[1, 3].axis("off")  # an empty panel still takes a panel's space
    assert viz.panels(fig) == 8
    path = viz.save(fig, "ok.png")
    assert path.endswith("ok.png") and (tmp_path / "figures" / "ok.png").stat().st_size > 0
    plt.close(fig)


def test_save_refuses_low_dpi_and_too_many_panels(tmp_path):
    fig, _ = viz.grid(1, 2)
    with pytest.raises(ValueError, match=r"'low\.png': dpi 80 is below 100"):
        viz.save(fig, "low.png", dpi=80)
    plt.close(fig)
    fig, axes = viz.grid(3, 3)
    with pytest.raises(ValueError, match=r"'big\.png' has 9 panels; at most 8"):
        viz.save(fig, "big.png")
    axes[2, 2].set_visible(False)  # a hidden axes is no panel
    viz.save(fig, "big.png")
    plt.close(fig)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["big.png"]
