"""Draw resources/icon.png (64x64): a house roof with solar panels under a sun.

Run once with ``.venv/bin/python resources/make_icon.py``; the PNG is committed.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, Polygon, Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parent / "icon.png"


def main() -> None:
    fig = plt.figure(figsize=(1, 1), dpi=64)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 64)
    ax.set_ylim(0, 64)
    ax.axis("off")
    # sun with rays
    ax.add_patch(Circle((48, 50), 8, color="#f5b800"))
    for dx, dy in ((0, 12), (12, 0), (-12, 0), (9, 9), (-9, 9), (9, -9)):
        ax.plot([48 + dx * 0.8, 48 + dx * 1.05], [50 + dy * 0.8, 50 + dy * 1.05], color="#f5b800", lw=2)
    # walls and roof
    ax.add_patch(Rectangle((10, 4), 36, 20, color="#d9d2c5", ec="#5a4a3a", lw=1.2))
    ax.add_patch(Polygon([(4, 24), (28, 44), (52, 24)], closed=True, color="#b3412e", ec="#5a2a1e", lw=1.2))
    # solar panels on the roof
    for i in range(3):
        x0 = 14 + i * 8
        ax.add_patch(
            Polygon(
                [(x0, 26), (x0 + 6, 26), (x0 + 6 + 2, 31), (x0 + 2, 31)],
                closed=True,
                color="#1f3b73",
                ec="#a9c2e8",
                lw=0.6,
            )
        )
    ax.add_patch(Rectangle((24, 4), 8, 11, color="#5a4a3a"))
    fig.savefig(OUT, dpi=64, transparent=True)
    plt.close(fig)


if __name__ == "__main__":
    main()
