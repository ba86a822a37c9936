"""The README's screenshots of the report, from a run's report.html, in headless Chromium
(the test suite's, tests/browser.py), each crop reduced to a 256-colour PNG.

    .venv/bin/python docs/img/screenshots.py [runs/digits-small_cnn/report.html]
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests.browser import console_errors, headless_chromium  # noqa: E402

#: file -> (the element whose top starts the crop, those whose lowest bottom ends it)
CROPS = {"report-top.png": ("header", "#fig-macs, #selection"),
         "report-plans.png": ("#fig-history", "#fig-plan")}


def main() -> None:
    page = Path(sys.argv[1] if len(sys.argv) > 1
                else ROOT / "runs" / "digits-small_cnn" / "report.html").resolve()
    with headless_chromium(window=(1400, 3000)) as d:
        d.get(page.as_uri())
        for _ in range(200):
            if d.execute_script("return document.body.dataset.ready === '1'"):
                break
            time.sleep(0.1)
        else:
            sys.exit("the report did not finish drawing")
        if console_errors(d):
            sys.exit(f"console errors: {console_errors(d)}")
        shot = Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB")
        for name, (first, last) in CROPS.items():
            top = d.execute_script(f"return document.querySelector('{first}')"
                                   ".getBoundingClientRect().top")
            bottom = d.execute_script(
                f"return Math.max(...[...document.querySelectorAll('{last}')]"
                ".map(e => e.getBoundingClientRect().bottom))")
            crop = shot.crop((0, max(0, int(top) - 8), shot.width, int(bottom) + 8))
            out = Path(__file__).with_name(name)
            crop.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
            print(f"{out}: {crop.width}x{crop.height}, {out.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
