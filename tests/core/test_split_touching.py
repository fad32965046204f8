"""Separating touching roofs: vectorize.split_touching on hand-made probability maps."""

import numpy as np
from scipy import ndimage

from roof_detector.core.vectorize import split_touching


def _two_roofs_and_a_bridge(bridge_u8=170):
    prob = np.zeros((20, 40), np.uint8)
    prob[5:15, 3:15] = 240
    prob[5:15, 25:37] = 240
    prob[8:12, 15:25] = bridge_u8
    prob[14, 3:15] = 150  # low edge on the array's border row of the component: scipy mislabels borders
    return prob


def _split(prob, threshold_u8=128, core_u8=230, min_core_px=10, open_ids=None):
    building = prob >= threshold_u8
    labels, count = ndimage.label(building)
    if open_ids is None:
        open_ids = np.zeros(count + 1, bool)
    return building, labels, count, split_touching(labels, count, open_ids, prob, core_u8, min_core_px)


def test_two_cores_become_two_parts_split_in_the_bridge():
    building, labels, count, (out, n, open_ids) = _split(_two_roofs_and_a_bridge())
    assert count == 1 and n == 2 and len(open_ids) == 3
    assert ((out > 0) == building).all()  # no pixel lost or added
    left, right = out[10, 8], out[10, 30]
    assert {left, right} == {1, 2}
    assert (out[5:15, 3:15] == left).all() and (out[5:15, 25:37] == right).all()
    for part in (1, 2):
        assert ndimage.label(out == part)[1] == 1  # each part is one 4-connected piece


def test_one_core_or_a_small_second_core_leaves_the_component_whole():
    prob = _two_roofs_and_a_bridge()
    prob[5:15, 25:37] = 200  # right roof below the core probability
    _, labels, _, (out, n, _) = _split(prob)
    assert n == 1 and (out == labels).all()
    prob[9:11, 30:32] = 240  # a 4-pixel core: under min_core_px
    _, labels, _, (out, n, _) = _split(prob)
    assert n == 1 and (out == labels).all()


def test_open_component_is_not_split_until_finished():
    prob = _two_roofs_and_a_bridge()
    _, labels, count, (out, n, _) = _split(prob, open_ids=np.array([False, True]))
    assert n == count == 1 and (out == labels).all()


def test_random_fields_lose_no_pixel_and_give_connected_parts():
    rng = np.random.default_rng(0)
    splits = 0
    for _ in range(60):
        prob = (ndimage.gaussian_filter(rng.random((40, 50)), 3) * 1020 - 300).clip(0, 255).astype(np.uint8)
        building, labels, count, (out, n, _) = _split(prob, threshold_u8=100, core_u8=200, min_core_px=3)
        assert ((out > 0) == building).all()
        for part in range(1, n + 1):
            m = out == part
            if m.any():
                assert ndimage.label(m)[1] == 1
                assert len(np.unique(labels[m])) == 1
        splits += n - count
    assert splits > 20  # the fields do have touching blobs


def test_the_first_open_row_is_found_from_the_bottom_as_a_scan_from_the_top_finds_it():
    """`_first_open_row` reads only the carried rows, upwards; it must give the row a scan of the
    whole strip from the top gives, whatever the shapes (components taller than a band included)."""
    from scipy import ndimage

    from roof_detector.core.vectorize import _CARRY_BAND_ROWS, _first_open_row

    rng = np.random.default_rng(0)
    checked = tall = 0
    for _ in range(600):
        h, w = int(rng.integers(1, 4 * _CARRY_BAND_ROWS)), int(rng.integers(1, 30))
        labels, n = ndimage.label(rng.random((h, w)) < rng.uniform(0.05, 0.75))
        open_ids = np.zeros(n + 1, bool)
        open_ids[labels[-1]] = True
        open_ids[0] = False
        if not open_ids.any():
            continue
        top = next(r for r in range(h) if open_ids[labels[r]].any())
        assert _first_open_row(labels, open_ids) == top
        checked += 1
        tall += h - top > _CARRY_BAND_ROWS
    assert checked > 400 and tall > 20
