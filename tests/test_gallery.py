"""The gallery (`mme-jd inspect`), the local app (`mme-jd app`) and their check in a browser.

A tiny random model whose experts differ and whose router sends some rows away, on synthetic
rows (one of them without an image): the gallery's structure (one card per row, sections in
order, images embedded, nothing loaded from the network), every counterfactual builder, the
command line, the app's form round trip, and headless Chromium where it is installed."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import nudge_experts

from mme_jd import cli
from mme_jd.cues import Cue
from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.browser_check import find_chromium
from mme_jd.evaluation.gallery import SECTIONS, inspect_examples, write_gallery
from mme_jd.inference import collect_outputs
from mme_jd.tiny import tiny_model

ROWS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model, saved folder, rows): experts nudged apart, the router threshold at the median so
    that about half of the rows are routed; the first row has no image (a stand-in description)."""
    model = tiny_model().eval()
    nudge_experts(model, scale=0.3)
    data = make_synthetic_benchmark(num_test=ROWS, seed=5, splits=["test_balanced"])["test_balanced"]
    rows = data.map(lambda row, index: {"image": None if index == 0 else row["image"],
                                        "image_description": "a dog on a beach" if index == 0 else ""},
                    with_indices=True)
    router_logits = collect_outputs(model, model.processor, rows, mode="mme_jd")["router_logits"]
    model.config.router_threshold = float((1 - router_logits.softmax(-1)[:, 0]).median())
    folder = tmp_path_factory.mktemp("gallery") / "model"
    model.save_pretrained(folder)
    return model, folder, rows


class _Page(HTMLParser):
    """The parts of a page the checks look at: sections, cards, images, links, scripts."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []
        self.cards: list[tuple[str, str]] = []  # (section, card id)
        self.images: list[str] = []
        self.addresses: list[str] = []
        self.scripts = 0
        self.no_image = 0
        self.cue_words: list[str] = []
        self.csp = None
        self._in_cue = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "article" and "example" in attrs.get("class", "").split():
            self.cards.append((attrs["data-section"], attrs["id"]))
        if tag == "img":
            self.images.append(attrs["src"])
        for name in ("src", "href", "action"):
            if name in attrs and tag != "img":
                self.addresses.append(attrs[name])
        if tag == "script":
            self.scripts += 1
        if tag == "div" and attrs.get("class") == "noimage":
            self.no_image += 1
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.csp = attrs["content"]
        self._in_cue = tag == "span" and "cue" in attrs.get("class", "").split()

    def handle_data(self, data):
        if self._in_cue:
            self.cue_words.append(data)
            self._in_cue = False


def test_gallery_structure(setup, tmp_path):
    model, _, rows = setup
    result = write_gallery(model, rows, tmp_path, rows=None, mode="mme_jd", progress=False)
    text = Path(result["html"]).read_text(encoding="utf-8")
    page = _Page(text)
    data = json.loads(Path(result["json"]).read_text())
    examples = data["examples"]

    assert len(page.cards) == ROWS == len(examples) == result["summary"]["rows"]
    assert page.sections == [key for key, _, _ in SECTIONS]
    order = [key for key, _, _ in SECTIONS]
    positions = [order.index(section) for section, _ in page.cards]
    assert positions == sorted(positions), "cards must follow the section order"
    assert {key: sum(s == key for s, _ in page.cards) for key in order} == result["summary"]["sections"]
    # what made each row land in its section
    for example in examples:
        if example["section"] == "conflict":
            assert example["conflicting_cues"]
        elif example["section"] == "routed":
            assert example["strategy"] in ("image", "text", "both")
        elif example["section"] == "error":
            assert example["correct"] is False
    assert result["summary"]["sections"]["conflict"] > 0 and result["summary"]["sections"]["routed"] > 0
    assert {e["strategy"] for e in examples} - {"none"}, "some rows are routed"
    # every score source: the routed mixture, each expert, both counterfactuals
    assert set(examples[1]["scores"]) == {"final (mme_jd)", "general", "image_debias", "text_debias",
                                          "text counterfactual", "image counterfactual"}
    # self-contained: images embedded, no script, no address leaving the page, a CSP forbidding loads
    # the row without an image: its grey stand-in masks nothing (filling it with its mean changes nothing)
    assert page.no_image == 1 and not examples[0]["has_image"] and not examples[0]["masked_patches"]
    assert all(e["masked_patches"] for e in examples[1:])
    assert len(page.images) == 2 * (ROWS - 1)
    assert all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for src in page.images)
    assert all(address.startswith(("#", "data:")) for address in page.addresses), page.addresses
    assert page.scripts == 0 and "default-src 'none'" in page.csp
    # the planted text cue is marked wherever it occurs
    with_cue = sum(w == "#irony" for e in examples for w in e["text"].split())
    assert page.cue_words.count("#irony") == with_cue > 0
    # the summary: per-group accuracy over the synthetic groups, routing shares
    assert "worst_group_accuracy" in result["summary"] and sum(
        v["rows"] for v in result["summary"]["groups"].values()) == ROWS
    assert sum(v["rows"] for v in result["summary"]["strategies"].values()) == ROWS


@pytest.mark.parametrize("text_builder, image_builder", [
    ("saliency", "gradient"), ("given", "given"), ("swap", "attention"), ("cue_only", "cue_only"),
    ("cue_removed", "attention"),
])
def test_every_counterfactual_builder(setup, text_builder, image_builder):
    model, _, rows = setup
    rows = rows.select(range(1, 5))
    cues = [Cue("irony", pattern="#irony", label="sarcastic"), Cue("red", image="dominant hue", params={"hue": 0})]
    examples = inspect_examples(model, model.processor, rows, mode="general", text_counterfactual=text_builder,
                                image_counterfactual=image_builder, cues=cues)
    assert len(examples) == 4
    for example, row in zip(examples, rows):
        words, counterfactual = example.text.split(), example.text_counterfactual.split()
        assert example.text_builder == text_builder and example.image_builder == image_builder
        assert example.cues.keys() == {"irony", "red"}
        if text_builder == "given":
            assert example.changed_words == row["core_word_positions"]
        if text_builder == "cue_removed":
            assert counterfactual == [w for i, w in enumerate(words) if i not in example.changed_words]
            assert "#irony" not in counterfactual
        else:
            assert all(counterfactual[i] != words[i] for i in example.changed_words)
        if text_builder == "cue_only":
            assert all(counterfactual[i] == "#irony" for i in example.cue_words)
        if image_builder == "given":
            assert example.masked_patches, "the glyph's box covers at least one patch"
        if image_builder == "cue_only":  # dominant hue keeps no region: every patch is filled
            assert len(example.masked_patches) == example.grid[0] * example.grid[1]
        rows_expected = {"conflict"} if any(example.conflicting_cues) else {"error", "other"}
        assert example.section in rows_expected


def test_inspect_command(setup, tmp_path, capsys):
    _, folder, _ = setup
    code = cli.main(["inspect", str(folder), "synthetic", "--rows", "5", "--output-dir", str(tmp_path),
                     "--cue", "irony:sarcastic=#irony", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "gallery of 5 rows" in captured.out
    page = _Page((tmp_path / "gallery.html").read_text(encoding="utf-8"))
    assert len(page.cards) == 5
    summary = json.loads((tmp_path / "gallery.json").read_text())["summary"]
    assert set(summary["cues"]) == {"irony"} and all("irony=" in g for g in summary["groups"])
    # a wrong cue label is one line naming the model's labels
    code = cli.main(["inspect", str(folder), "synthetic", "--rows", "2", "--output-dir", str(tmp_path),
                     "--cue", "irony:funny=#irony", "--no-progress"])
    assert code == 1 and "not_sarcastic" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the app


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def _request(port, method="GET", body=None, content_type=None, host=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": content_type} if content_type else {}
    if host:
        headers["Host"] = host
    connection.request(method, "/", body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read().decode("utf-8")


def test_app_round_trip(setup):
    import io

    from mme_jd.app import make_server

    model, _, rows = setup
    server = make_server(model, port=0)
    assert server.server_address[0] == "127.0.0.1", "the app binds to this machine only by default"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        status, text = _request(port)
        assert status == 200 and len(_Page(text).cards) == 0 and 'name="image"' in text
        image = io.BytesIO()
        rows[1]["image"].save(image, format="PNG")
        content_type, body = _multipart({"text": rows[1]["text"], "mode": "mme_jd", "label": "sarcastic"},
                                        {"image": image.getvalue()})
        status, text = _request(port, "POST", body, content_type)
        page = _Page(text)
        assert status == 200 and len(page.cards) == 1 and len(page.images) == 2
        assert "strategy: " in text and "label: sarcastic" in text
        token = text.split('name="upload" value="', 1)[1].split('"', 1)[0]
        # the mode switch re-uses the uploaded image
        content_type, body = _multipart({"text": rows[1]["text"], "mode": "general", "upload": token}, {})
        status, text = _request(port, "POST", body, content_type)
        assert status == 200 and len(_Page(text).images) == 2 and "strategy: general" in text
        # no image: the grey stand-in; a bad input: the form again, saying what is wrong
        content_type, body = _multipart({"text": "a text alone", "mode": "mid"}, {})
        status, text = _request(port, "POST", body, content_type)
        assert status == 200 and _Page(text).no_image == 1
        content_type, body = _multipart({"text": "   ", "mode": "general"}, {})
        status, text = _request(port, "POST", body, content_type)
        assert status == 400 and "text" in text and len(_Page(text).cards) == 0
        assert _request(port, host="attacker.example")[0] == 403
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed (apt-get install chromium): "
                                                    "the browser check runs where it is")
def test_browser_check(setup, tmp_path):
    from mme_jd.browser_check import run_check

    summary = run_check(tmp_path, model=setup[0], rows=4)
    assert summary["gallery"]["cards"] == 4 and not summary["problems"]
    assert [c["cards"] for c in summary["app"]] == [0, 1, 1]
    for name in ("gallery.png", "app.png"):
        assert 0 < (tmp_path / name).stat().st_size < 300_000


def test_gallery_needs_rows(setup, tmp_path):
    model, _, rows = setup
    with pytest.raises(ValueError, match="at least one row"):
        write_gallery(model, rows, tmp_path, rows=0)
    with pytest.raises(ValueError, match="'image' column"):
        inspect_examples(model, model.processor, rows.remove_columns("image"))
    assert torch.is_grad_enabled()
