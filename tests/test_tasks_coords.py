"""Coordinate mapping between the model's resized frame and the original image (property tests)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from qwenvl.media.common import smart_resize
from qwenvl.tasks.coords import FrameMap, order_box

sizes = st.tuples(st.integers(28, 4000), st.integers(28, 4000))


def _frame(hw, max_pixels):
    h, w = hw
    return FrameMap((h, w), smart_resize(h, w, max_pixels=max_pixels))


@settings(max_examples=200, deadline=None)
@given(sizes, st.sampled_from([256 * 28 * 28, 1280 * 28 * 28, 16384 * 28 * 28]), st.data())
def test_box_round_trip_within_one_pixel(hw, maxp, data):
    f = _frame(hw, maxp)
    h, w = f.original
    x1, x2 = sorted(data.draw(st.floats(0, w), label="x") for _ in range(2))
    y1, y2 = sorted(data.draw(st.floats(0, h), label="y") for _ in range(2))
    back = f.box_to_original(f.box_to_model((x1, y1, x2, y2)))
    assert all(abs(a - b) <= 1.0 for a, b in zip(back, (x1, y1, x2, y2)))
    # integer training labels: still within one original-image pixel per model pixel of rounding
    lab = f.box_label((x1, y1, x2, y2))
    rh, rw = f.resized
    assert 0 <= lab[0] <= rw - 1 and 0 <= lab[3] <= rh - 1
    again = f.box_to_original(lab)
    assert all(abs(a - b) <= max(f.sx, f.sy) + 1.0 for a, b in zip(again[:2], (x1, y1)))


@settings(max_examples=200, deadline=None)
@given(sizes, st.floats(-500, 5000), st.floats(-500, 5000))
def test_points_clip_and_round_trip(hw, x, y):
    f = _frame(hw, 1280 * 28 * 28)
    h, w = f.original
    px, py = f.point_to_original((x, y))
    assert 0 <= px <= w and 0 <= py <= h
    rx, ry = f.point_to_model((px, py))
    bx, by = f.point_to_original((rx, ry))
    assert abs(bx - px) <= 1.0 and abs(by - py) <= 1.0


def test_swapped_corners_are_ordered_and_clipped():
    f = FrameMap((700, 1000), (364, 532))
    assert f.box_to_original((532, 364, 266, 182)) == (500.0, 350.0, 1000.0, 700.0)
    assert f.box_to_original((-10, -10, 600, 400)) == (0.0, 0.0, 1000.0, 700.0)
    assert order_box((5, 9, 1, 2)) == (1.0, 2.0, 5.0, 9.0)
    assert f.box_label((500, 350, 1000, 700)) == [266, 182, 531, 363]
