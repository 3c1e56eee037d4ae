"""Drawing task results (qwenvl.tasks.draw): pixel checks on synthetic images."""
from PIL import Image

from qwenvl.tasks.draw import PALETTE, draw_detections, draw_document, draw_text_items, save_png
from qwenvl.tasks.types import Detection, DocBlock, TextItem

WHITE = (255, 255, 255)


def white(w=400, h=300):
    return Image.new("RGB", (w, h), WHITE)


def test_box_outline_drawn_inside_untouched():
    im = white()
    out = draw_detections(im, [Detection("cat", bbox=(100, 100, 300, 250))], width=3)
    assert out.size == im.size and out is not im
    for xy in [(100, 175), (300, 175), (200, 100), (200, 250), (101, 101)]:
        assert out.getpixel(xy) != WHITE, xy
    assert out.getpixel(xy) == PALETTE[0]
    assert out.getpixel((200, 200)) == WHITE  # far from the edges and the tag
    assert out.getpixel((50, 50)) == WHITE
    # the label tag sits above the box
    assert any(out.getpixel((x, y)) != WHITE for x in range(100, 130) for y in range(80, 100))


def test_input_not_modified_and_path_input(tmp_path):
    im = white()
    before = im.tobytes()
    draw_detections(im, [Detection("a", bbox=(10, 10, 50, 50), point=(30, 30))])
    assert im.tobytes() == before
    p = save_png(im, tmp_path / "sub" / "dir" / "x.png")
    out = draw_detections(p, [Detection("a", bbox=(10, 10, 50, 50))])
    assert out.size == (400, 300) and out.getpixel((10, 30)) != WHITE


def test_point_drawn_at_location():
    out = draw_detections(white(), [Detection("p", point=(200, 150))], labels=False)
    assert out.getpixel((200, 150)) == PALETTE[0]
    assert out.getpixel((200, 100)) == WHITE and out.getpixel((150, 150)) == WHITE


def test_same_label_same_colour_different_label_other_colour():
    dets = [Detection("dog", bbox=(10, 10, 60, 60)), Detection("cat", bbox=(100, 100, 160, 160)),
            Detection("dog", bbox=(200, 200, 260, 260))]
    out = draw_detections(white(), dets, labels=False, width=2)
    assert out.getpixel((10, 30)) == out.getpixel((200, 230)) == PALETTE[0]
    assert out.getpixel((100, 130)) == PALETTE[1]


def test_top_edge_label_stays_inside():
    out = draw_detections(white(), [Detection("top", bbox=(50, 0, 200, 100))], width=2)
    assert any(out.getpixel((x, y)) != WHITE for x in range(52, 80) for y in range(3, 12))


def test_unicode_labels_and_boxes_outside_do_not_crash():
    dets = [Detection("猫 🐱 ключ", bbox=(-50, -50, 100, 100)), Detection("\u200b\x00", bbox=(350, 250, 900, 900)),
            Detection("far", bbox=(1e12, -1e12, 2e12, 3e12)), Detection("nan", bbox=(float("nan"), 0, 1, 1)),
            Detection("swapped", bbox=(300, 200, 250, 150)), Detection("pt", point=(-10, 5000)),
            Detection("", bbox=(5, 5, 5, 5))]
    for mode in ("RGB", "RGBA", "L", "P"):
        out = draw_detections(Image.new(mode, (120, 80)), dets)
        assert out.size == (120, 80)


def test_draw_text_items():
    items = [TextItem("Hello 世界", (50, 50, 200, 80)), TextItem("no box"), TextItem("edge", (10, 270, 100, 299))]
    out = draw_text_items(white(), items, width=2)
    assert out.size == (400, 300)
    assert out.getpixel((50, 65)) == PALETTE[0] and out.getpixel((125, 65)) == WHITE
    assert any(out.getpixel((x, y)) != WHITE for x in range(52, 90) for y in range(82, 95))  # text under the box


def test_draw_document_colour_per_kind():
    blocks = [DocBlock("p", (20, 20, 180, 60), "a"), DocBlock("table", (20, 100, 380, 280), "t"),
              DocBlock("p", (200, 20, 380, 60), "b"), DocBlock("list", None, "")]
    out = draw_document(white(), blocks, width=2)
    assert out.getpixel((20, 40)) == out.getpixel((200, 40))
    assert out.getpixel((20, 200)) != out.getpixel((20, 40)) and out.getpixel((20, 200)) != WHITE
    assert out.getpixel((200, 200)) == WHITE
