"""The HTML leaderboard in a real headless Chromium (Selenium): it loads from disk without console
errors, sorts on a header click and filters rows.

Needs chromium, chromedriver and selenium; skipped with the reason when one is missing, failed
instead with ``BENCH_REQUIRE_BROWSER=1`` (as ``BENCH_REQUIRE_SLURM`` does for the cluster tests), so
that CI cannot pass by skipping. The driver is the one on PATH: Selenium Manager, which would
download one, is never asked. A screenshot goes to ``$BENCH_ARTEFACTS`` (default: the test's tmp_path).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_report_html import expected_rows, write_results

REQUIRE_ENV = "BENCH_REQUIRE_BROWSER"
ARTEFACTS_ENV = "BENCH_ARTEFACTS"
BROWSERS = ("chromium", "chromium-browser")
SUITE_COLUMN = 4  # 1-based: model, method, shots, then the mini suite score
WINDOW = (1400, 1000)

pytestmark = pytest.mark.slow


def browser_missing() -> str:
    """Why no headless Chromium can be driven here, or "" when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install selenium"
    if not any(shutil.which(name) for name in BROWSERS):
        return f"no Chromium on PATH ({', '.join(BROWSERS)}): apt-get install chromium"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH: apt-get install chromium-driver"
    return ""


@pytest.fixture(scope="module")
def driver() -> Iterator:
    reason = browser_missing()
    if reason:
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(name) for name in BROWSERS if shutil.which(name))
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def page(driver, tmp_path_factory: pytest.TempPathFactory):
    """The report's index.html opened from file://; the console log read once, right after loading."""
    html = write_results(tmp_path_factory.mktemp("results")).html
    driver.get(html.resolve().as_uri())
    driver.console = driver.get_log("browser")
    return driver


def visible_rows(driver, table: str = "leaderboard") -> list:
    return [row for row in driver.find_elements("css selector", f"#{table} tbody tr") if row.is_displayed()]


def column_values(driver, column: int) -> list[str]:
    """The data-value of column ``column`` (1-based) in the leaderboard's displayed order."""
    cells = driver.find_elements("css selector", f"#leaderboard tbody tr td:nth-child({column})")
    return [cell.get_attribute("data-value") for cell in cells]


def test_the_page_loads_from_disk_without_console_errors(page) -> None:
    assert page.title.startswith("Leaderboard: test AP")
    severe = [entry for entry in page.console if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_one_row_per_model_method_and_shots(page) -> None:
    rows = [tuple(cell.text for cell in row.find_elements("css selector", "td")[:3]) for row in visible_rows(page)]
    assert sorted(rows) == sorted(expected_rows())


def test_a_header_click_sorts_numerically_and_a_second_reverses(page) -> None:
    before = column_values(page, SUITE_COLUMN)
    header = page.find_element("css selector", f"#leaderboard thead th:nth-child({SUITE_COLUMN})")
    header.click()
    ascending = column_values(page, SUITE_COLUMN)
    scored = [value for value in ascending if value]
    assert ascending != before  # the page's order (best first) is not ascending
    assert scored == sorted(scored, key=float) and ascending[len(scored):] == [""]  # missing last
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    descending = column_values(page, SUITE_COLUMN)
    assert [value for value in descending if value] == sorted(scored, key=float, reverse=True)
    assert descending[-1] == ""  # missing stays last


def test_a_filter_hides_the_other_rows(page) -> None:
    from selenium.webdriver.support.ui import Select

    family = Select(page.find_element("css selector", "select[data-filter=family]"))
    family.select_by_visible_text("lora")  # lora and lora[note=<b>]
    assert sorted(row.find_elements("css selector", "td")[1].text for row in visible_rows(page)) == [
        "lora", "lora[note=<b>]",
    ]
    assert len(visible_rows(page, "per-dataset")) == 2
    Select(page.find_element("css selector", "select[data-filter=shots]")).select_by_visible_text("3")
    assert visible_rows(page) == []  # no lora row at 3 shots
    assert page.find_element("id", "shown").text == f"0 of {len(expected_rows())} rows"
    family.select_by_visible_text("all")
    assert [row.find_elements("css selector", "td")[1].text for row in visible_rows(page)] == ["sdpt"]


def test_screenshot(page, tmp_path: Path) -> None:
    """Not a check: a picture of the whole page as it opens, for a person to look at (CI keeps $BENCH_ARTEFACTS)."""
    page.get(page.current_url)  # unsorted, unfiltered
    size = page.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WINDOW[0], "height": int(size["height"]), "deviceScaleFactor": 1, "mobile": False,
    })
    folder = Path(os.environ.get(ARTEFACTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report_index.png"
    assert page.save_screenshot(str(path))
    print(f"screenshot of results/index.html: {path}")
