"""The README's screenshot of `memla explore`: the default model, mkeb-mini record 0, two methods.

Starts ``memla explore`` on the embedded Gemma 3 270M, drives it in headless chromium with the
browser test's Selenium helpers (tests/explore_browser.py), edits the page's first fact (the
capital of France, Paris -> Rome, in English) with the given methods, and saves the whole page
as a palette PNG (small enough for the repository).

    python scripts/explore_screenshot.py                       # docs/explore.png, memla-local and rome
    python scripts/explore_screenshot.py --methods memla,rome --out /tmp/explore.png

Needs the ui extra and the browser (`make test-ui` installs both).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from explore_browser import (chrome, choose_methods, full_screenshot, open_page, run_edit,  # noqa: E402
                             serving, table_rows)
from PIL import Image  # noqa: E402

WIDTH = 1400


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="memla-local,rome", help="methods to run (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "explore.png", help="PNG to write")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed for the edits")
    args = parser.parse_args()
    methods = args.methods.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    t0 = time.perf_counter()
    with serving(["--methods", args.methods], log=log) as url, chrome(width=WIDTH) as driver:
        open_page(driver, url)
        choose_methods(driver, methods)
        status = run_edit(driver, methods, timeout=args.timeout)
        print("progress:", status)
        for row in table_rows(driver, "explore-summary"):
            print("summary:", row)
        raw = full_screenshot(driver, args.out.with_suffix(".raw.png"), width=WIDTH)
    image = Image.open(raw).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(args.out, optimize=True)
    raw.unlink()
    log.unlink()
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB, {image.width}x{image.height}, "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
