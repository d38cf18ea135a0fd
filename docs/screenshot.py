"""Screenshots for the README, taken in headless Chromium (Debian's `chromium`, via Playwright).

    python docs/screenshot.py results/quick/report/index.html docs/report.png --height 2600
    python docs/screenshot.py "http://127.0.0.1:5055/#/experiments/1/runs" docs/mlflow.png --online \
        --width 1600 --height 1000 --wait-ms 6000 --click 'button[aria-label="Close"]' \
        --click 'button[data-component-id*="runnamecellrenderer"]'

A file is opened with the network off (the report must not need it); `--online` allows
the local server a URL names (`mlflow ui`, say). `--click` clicks the first element each
CSS selector matches, in order, before the picture (closing a panel, expanding the nested
runs). The page is cut to `--height` pixels from the top.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", help="a file path or an http:// URL")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels (default: 1280)")
    parser.add_argument("--height", type=int, default=2400, help="height of the cut in pixels (default: 2400)")
    parser.add_argument("--online", action="store_true", help="allow network requests (a local server)")
    parser.add_argument("--wait-ms", type=int, default=1500, help="settle time after load (default: 1500)")
    parser.add_argument("--click", action="append", default=[], metavar="SELECTOR",
                        help="CSS selector of an element to click first; repeatable (default: none)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    url = args.page if "://" in args.page else Path(args.page).resolve().as_uri()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(offline=not args.online, viewport={"width": args.width, "height": args.height})
        page = context.new_page()
        page.goto(url, wait_until="load")
        page.wait_for_timeout(args.wait_ms)
        for selector in args.click:
            page.locator(selector).first.click()
            page.wait_for_timeout(1000)
        page.screenshot(path=args.out, clip={"x": 0, "y": 0, "width": args.width, "height": args.height},
                        full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
