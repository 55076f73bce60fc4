"""OHIF (the build inside MONAI Label) end to end in headless Chromium against Orthanc and the app.

The stack is the hospital one: Orthanc with authentication, ``monailabel start_server --studies
<Orthanc DICOMweb>`` serving OHIF at /ohif/ and proxying its DICOMweb requests with the
credentials. The test drives the page as an annotator would and asserts on what the page shows:

1. the study list lists the phantom study (patient, modality, number of instances);
2. the MONAI Label mode opens the CT series (all 33 slices, CT pixels drawn in the viewport);
3. the MONAI Label panel connects, runs ``emphysema_laa`` and the segmentation is drawn over the
   CT (coloured pixels appear in the axial viewport, where there were none);
4. a label saved as 3D Slicer saves it comes back as a DICOM SEG series that OHIF's own SEG
   reader opens and draws over the CT.

Chromium draws WebGL in software (``--enable-unsafe-swiftshader``). With
``DRASCLR_OHIF_SCREENSHOTS=docs/images`` the screenshots of the documentation are written there.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests

from drasclr_monailabel.io.dicom_writer import SeriesIdentity
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.pacs.connection import open_client
from drasclr_monailabel.pacs.upload import upload_volume

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1000")
PAGE_TIMEOUT_S = 90
EMPHYSEMA_BLOBS = 60
"""Enough low-attenuation blobs that the middle slice (where OHIF opens) shows some."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the browser: {reason}")
        pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by the Debian chromedriver, with a fresh profile."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require(False, "selenium is not installed (pip install selenium)")
    _require(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
             "chromium and chromedriver are not installed (sudo bash scripts/browser.sh)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture
def screenshots(tmp_path) -> Callable[[object, str], None]:
    folder = Path(os.environ.get("DRASCLR_OHIF_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def save(driver, name: str) -> None:
        driver.save_screenshot(str(folder / name))

    return save


def wait_for(what: str, check: Callable[[], object], timeout_s: float = PAGE_TIMEOUT_S):
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (WebDriverException, AssertionError, IndexError) as exc:  # the page is still building
            last_error = exc
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what} (last error: {last_error})")


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def viewport_pixels(driver, index: int = 0) -> np.ndarray:
    """RGB pixels (H, W, 3) of the ``index``-th viewport canvas, as drawn on the page."""
    from PIL import Image

    data_url = driver.execute_script(
        "const c = document.querySelectorAll('canvas.cornerstone-canvas')[arguments[0]];"
        "return c ? c.toDataURL('image/png') : null;", index)
    assert data_url, "no viewport canvas on the page"
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
    return np.asarray(image)


def coloured_pixels(rgb: np.ndarray) -> int:
    """Pixels that are not grey: a CT is drawn in grey levels, a segmentation in colour."""
    channels = rgb.astype(np.int16)
    return int(np.count_nonzero(channels.max(axis=2) - channels.min(axis=2) > 40))


def click_button(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    buttons = [b for b in driver.find_elements(By.XPATH, f"//button[contains(., '{text}')]") if b.is_displayed()]
    assert buttons, f"no '{text}' button on the page"
    buttons[0].click()


def dismiss_banner(driver) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[contains(., 'Confirm and Hide')]"):
        if button.is_displayed():
            button.click()


@pytest.fixture
def ohif_stack(orthanc, pacs_app_server):
    """Orthanc holding a chest phantom with visible emphysema, and the app serving OHIF on it."""
    from tests.fixtures.app import phantom_scan

    volume = CTVolume.from_sitk(phantom_scan(1, EMPHYSEMA_BLOBS))
    connection = orthanc.connection()
    identity = SeriesIdentity(patient_id="PHANTOM01", patient_name="Phantom^Chest", study_description="Chest CT phantom",
                              series_description="Phantom CT")
    stored = upload_volume(volume, open_client(connection), connection, identity)
    server = pacs_app_server(orthanc, skip_training="true", skip_scoring="true")
    assert server.wait_ready(), server.tail()
    return server, stored, volume.hu.shape[0]


def test_ohif_study_list_viewer_monai_label_panel_and_seg(browser, ohif_stack, screenshots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, stored, slices = ohif_stack
    study = stored.study_instance_uid

    # 1. Study list: the study from Orthanc, through MONAI Label's authenticated proxy.
    browser.get(f"{server.url}/ohif/")
    wait_for("the study in the study list", lambda: "PHANTOM01" in page_text(browser))
    dismiss_banner(browser)
    text = page_text(browser)
    assert "Phantom, Chest" in text and "CT" in text and str(slices) in text
    screenshots(browser, "ohif_study_list.png")

    # 2. The MONAI Label mode opens the CT series with all its slices.
    browser.execute_script("document.cookie = 'MONAILABEL_SERVER_URL=' + escape(arguments[0]) + '; path=/'", f"{server.url}/")
    browser.get(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={study}")
    wait_for("the series in the viewer", lambda: f"/{slices})" in page_text(browser))
    wait_for("CT pixels in the axial viewport", lambda: viewport_pixels(browser).mean() > 20)
    dismiss_banner(browser)
    assert coloured_pixels(viewport_pixels(browser)) == 0, "a segmentation is drawn before any was asked for"

    # 3. The panel connects to the server and runs the emphysema pre-segmentation.
    browser.find_element(By.XPATH, "//input[@id='monailabelServerURL']/../../td[3]/button").click()
    wait_for("the app in the MONAI Label panel", lambda: "drasclr emphysema" in page_text(browser))
    browser.find_element(By.XPATH, "//label[contains(., 'Auto-Segmentation')]").click()
    selector = wait_for("the model list", lambda: [s for s in browser.find_elements(By.CSS_SELECTOR, "select.selectBox")
                                                   if s.is_displayed()])[0]
    assert {o.get_attribute("value") for o in Select(selector).options} >= {"emphysema_laa", "lung"}
    Select(selector).select_by_value("emphysema_laa")
    [run] = [b for b in browser.find_elements(By.XPATH, "//button[@title='Run Segmentation']") if b.is_displayed()]
    run.click()
    wait_for("the emphysema segmentation over the CT", lambda: coloured_pixels(viewport_pixels(browser)) > 20)
    screenshots(browser, "ohif_monailabel_emphysema.png")

    # 4. A corrected label saved as 3D Slicer saves it is a DICOM SEG that OHIF itself opens.
    response = requests.post(f"{server.url}/infer/emphysema_laa?image={stored.series_instance_uid}&output=image", timeout=300)
    assert response.status_code == 200, response.text
    saved = requests.put(f"{server.url}/datastore/label?image={stored.series_instance_uid}&tag=final", timeout=120,
                         files={"label": ("label.nii.gz", response.content)})
    assert saved.status_code == 200, saved.text
    browser.get(f"{server.url}/ohif/segmentation?StudyInstanceUIDs={study}")
    seg_thumbnail = wait_for("the SEG series in the study browser", lambda: [
        e for e in browser.find_elements(By.XPATH, "//*[contains(text(), 'Emphysema label')]") if e.is_displayed()])
    dismiss_banner(browser)
    ActionChains(browser).double_click(seg_thumbnail[0]).perform()
    wait_for("OHIF's offer to open the SEG", lambda: "open this Segmentation" in page_text(browser))
    click_button(browser, "Yes")
    wait_for("the SEG drawn over the CT", lambda: coloured_pixels(viewport_pixels(browser)) > 20)
    assert "emphysema" in page_text(browser)
    screenshots(browser, "ohif_seg_overlay.png")
