"""The run report: figures from the per-second counts, escaping, and a real headless browser
(Debian's chromium, driven by Playwright) opening the file with no server."""

import base64
import shutil

from etl.models.captioner import engine_summary
from etl.pipeline import RunSummary
from etl.report import rates_over_time, render, stage_table
from etl.synthetic import jpeg_frames

START = 1_700_000_000


def test_rates_are_rows_per_second_in_bins_that_widen_on_long_runs():
    timeline = {"read": {START: 10, START + 1: 30}, "write": {START + 299: 5}}
    x, rates, width = rates_over_time(timeline, START, START + 300)
    assert width == 2 and x[:3] == [0, 2, 4]  # 300 s in at most 150 bins
    assert rates["read"][0] == 20.0 and sum(rates["read"]) * width == 40
    assert rates["write"][149] == 2.5 and sum(rates["decode"]) == 0


def test_stage_table_gives_rows_mean_while_producing_and_peak():
    table = stage_table({"decode": {START + 10: 4, START + 12: 8}, "caption": {}})
    assert table == [("decode", 12, 4.0, 8.0)]


def _summary(**extra) -> RunSummary:
    jpeg = base64.b64encode(jpeg_frames(1, 96, 64)[0]).decode()
    previews = [{"sample_id": f"clip-{i}", "shard": i // 2, "row": i % 2, "caption": caption, "quality": q,
                 "aesthetics": q, "caption_parse_error": None if q else "no JSON object in the answer",
                 "frame_count": 3, "jpeg": jpeg}
                for i, (caption, q) in enumerate([("a red car", 4.0), ("<script>alert(1)</script>", None),
                                                  ("\x00\ufffd bytes", 2.5)])]
    fields = dict(run_id="20261123T000000-abcdef", output="/tmp/out", shards=[0, 1], seconds=12.5,
                  started_at=START, first_commit_seconds=6.0, commit_times=[START + 6, START + 12],
                  rows={"samples": 3, "quarantine": 1}, per_shard={0: (2, 0), 1: (1, 1)},
                  reasons={"decode: not a decodable image": 1},
                  timeline={stage: {START + s: 1 for s in range(4)} for stage in ("read", "decode", "write")},
                  previews=previews, plan="decode: 1 actor x 1.6 CPU", stage_stats="Operator 1 ReadMDS: ...",
                  engine=engine_summary({"answers": 3, "parsed": 2, "generate_seconds": 2.0, "wall_seconds": 2.5,
                                         "prompt_tokens": 3000, "generation_tokens": 900,
                                         "prefix_cache_queries": 3000, "prefix_cache_hits": 1200}))
    fields.update(extra)
    return RunSummary(**fields)


def test_render_escapes_captions_and_shows_every_section():
    page = render(_summary(), "input: /data\n", {"captioner": "models/tiny/qwen3_vl (transformers)"})
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for text in ("Curation run 20261123T000000-abcdef", "first commit</th><td>6.0 s; 2 commit round(s)",
                 "decode: not a decodable image</td><td class=n>1</td><td class=n>25.00%",
                 "quality 4, aesthetics 4", "no scores: no JSON object in the answer",
                 "models/tiny/qwen3_vl (transformers)", "input: /data", "decode: 1 actor x 1.6 CPU",
                 # the captioner's figures, from vLLM's counters
                 "answers that parsed</th><td>2 of 3 (66.7%)", "prefix-cache hit rate</th><td>40.0%",
                 "prompt tokens/s (inside generate)</th><td>1,500", "generated tokens/s (inside generate)</th><td>450",
                 "wall from its first batch)</th><td>80.0%"):
        assert text in page, text
    assert page.count('<div class="card">') == 3


def test_a_failed_run_says_why():
    page = render(_summary(error="ErrorBudgetExceeded: 40 of 100 samples failed", timeline={}, previews=[], engine={}),
                  "", {})
    assert '<span class="failed">failed: ErrorBudgetExceeded: 40 of 100 samples failed</span>' in page
    assert "No rows reached the write stage." in page and "No committed sample to show." in page
    assert "No sample reached the captioner." in page


def open_in_chromium(path) -> dict:
    """Load a local file in headless chromium: images shown, console errors, page errors."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "chromium is missing: `make test` installs Debian's chromium package"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url[:80]}"))
            page.goto(path.as_uri(), wait_until="load")
            images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
            return {"title": page.title(), "images": images, "errors": errors,
                    "text": page.inner_text("body")}
        finally:
            browser.close()


def test_report_opens_in_a_headless_browser_with_every_image_shown(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render(_summary(), "input: /data\n", {"vae": "models/tiny/vae"}))
    seen = open_in_chromium(path)
    assert seen["errors"] == []
    assert seen["title"] == "run 20261123T000000-abcdef"
    assert len(seen["images"]) == 4 and all(seen["images"])  # the plot and three contact-sheet frames
    assert "<script>alert(1)</script>" in seen["text"]  # shown as text, never run


def test_the_browser_check_catches_broken_images_and_console_errors(tmp_path):
    path = tmp_path / "broken.html"
    path.write_text('<!doctype html><title>x</title><img src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script>')
    seen = open_in_chromium(path)
    assert seen["images"] == [False] and "boom" in seen["errors"]
