"""tools/web_demo.py in a real browser (headless Debian chromium through selenium): the app runs as its own process on
a free port with the tiny demo model; the page captions an image + a box drawn by two mouse clicks and a point cloud +
a typed 3D box (the same captions tools/caption.py writes for those inputs), and a bad upload or a box outside the
image shows its message. A screenshot of each state is saved and must show something (and the drawn box)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from lavis.common.config import load_config
from lavis.common.registry import MODELS
from tests.conftest import REPO, free_port, tiny_demo_options
from tools import caption

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
APT = "apt-get install -y chromium chromium-driver"
DEMO = str(REPO / "configs" / "demo" / "regionblip_tiny.yaml")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason=f"no {'chromium' if CHROMIUM is None else 'chromedriver'} on PATH: {APT}")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 40


@pytest.fixture(scope="module")
def run_dir(tiny_world, tmp_path_factory):
    """A run folder holding one checkpoint of the tiny demo model's trainable tensors."""
    cfg = load_config(DEMO, tiny_demo_options(tiny_world))
    torch.manual_seed(1)
    state = MODELS.get(cfg.model_arch).from_config(cfg.model).trainable_state_dict()
    run = tmp_path_factory.mktemp("web_run")
    torch.save({"model": state}, run / "checkpoint_00000001.pth")
    return run


@pytest.fixture(scope="module")
def app_url(tiny_world, run_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("web_log") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, str(REPO / "tools" / "web_demo.py"), "--run", str(run_dir),
                                   "--cfg-path", DEMO, "--port", str(port), "--options",
                                   *tiny_demo_options(tiny_world)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the web demo did not start:\n{log.read_text()}")
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=20)


@pytest.fixture
def browser(app_url):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.get(app_url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-file input[type=file]"))
    yield driver
    driver.quit()


def screenshot(driver, path) -> np.ndarray:
    driver.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} is blank"
    return pixels


def box_pixels(pixels: np.ndarray) -> int:
    """Pixels of about the box's colour, magenta (255, 0, 255)."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((r > 220) & (g < 60) & (b > 220)).sum())


def text_of(driver, elem_id: str) -> str:
    return driver.find_element(By.ID, elem_id).text.strip()


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, WAIT_S).until(condition, message=f"waited {WAIT_S} s for {what}")


def upload(driver, elem_id: str, path) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))


def type_number(driver, elem_id: str, value: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.TAB)


def caption_on_page(driver, prefix: str) -> str:
    driver.find_element(By.ID, f"{prefix}-caption-button").click()
    box = driver.find_element(By.CSS_SELECTOR, f"#{prefix}-caption textarea")
    return wait_for(driver, lambda d: box.get_attribute("value"), f"a {prefix} caption on the page")


def tool_caption(run_dir, world, *inputs: str) -> str:
    return caption.main(["--cfg-path", DEMO, "--ckpt", str(run_dir), *inputs, "--options", *tiny_demo_options(world)])


def first_image(world) -> str:
    instances = json.loads((world / "refcoco" / "instances.json").read_text())
    return str(world / "images" / "train2014" / instances["images"][0]["file_name"])


def test_image_box_drawn_by_mouse_is_captioned(browser, tiny_world, run_dir, tmp_path, capsys):
    image = first_image(tiny_world)
    upload(browser, "image-file", image)
    view = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#image-view img"), "the image shown")[0]
    assert "96x96 image" in text_of(browser, "image-message")
    uploaded = screenshot(browser, tmp_path / "1_uploaded.png")

    # the 96x96 image is shown 4x (384 px) centred in its frame: offsets from the centre / 4 are image pixels
    ActionChains(browser).move_to_element_with_offset(view, -100, -60).click().perform()
    wait_for(browser, lambda d: "First corner" in text_of(d, "image-message"), "the first corner noted")
    ActionChains(browser).move_to_element_with_offset(view, 60, 80).click().perform()
    wait_for(browser, lambda d: text_of(d, "image-message").startswith("Box "), "the box closed")
    box = [browser.find_element(By.CSS_SELECTOR, f"#box-{n} input").get_attribute("value")
           for n in ("x1", "y1", "x2", "y2")]
    x1, y1, x2, y2 = map(float, box)
    assert 18 <= x1 <= 30 and 28 <= y1 <= 40 and 58 <= x2 <= 70 and 63 <= y2 <= 75, box
    time.sleep(0.5)  # the redrawn image
    boxed = screenshot(browser, tmp_path / "2_boxed.png")
    assert box_pixels(boxed) > box_pixels(uploaded) + 200  # the box's outline is drawn into the shown image

    text = caption_on_page(browser, "image")
    screenshot(browser, tmp_path / "3_captioned.png")
    assert text_of(browser, "image-message") == ""
    capsys.readouterr()
    assert text == tool_caption(run_dir, tiny_world, "--image", image, "--box", *box)


def test_point_cloud_with_a_typed_3d_box_is_captioned(browser, tiny_world, run_dir, tmp_path):
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Point cloud')]").click()
    scene = tiny_world / "scanrefer" / "scannet_data" / "scene0000_00"
    upload(browser, "points-file", f"{scene}_aligned_vert.npy")
    wait_for(browser, lambda d: "points: move the box" in text_of(d, "points-message"), "the cloud loaded")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#points-view .js-plotly-plot"), "the 3D view")
    time.sleep(1.0)
    default_box = box_pixels(screenshot(browser, tmp_path / "0_cloud.png"))
    box = [f"{v:.4f}" for v in np.load(f"{scene}_aligned_bbox.npy")[0, :6]]  # object 0: centre and size
    for name, value in zip(("cx", "cy", "cz", "dx", "dy", "dz"), box):
        type_number(browser, f"box3d-{name}", value)
    time.sleep(1.0)  # the redrawn view
    shown = screenshot(browser, tmp_path / "1_cloud_and_box.png")
    assert box_pixels(shown) > 50 and box_pixels(shown) != default_box  # the typed box's edges in the 3D view
    text = caption_on_page(browser, "points")
    screenshot(browser, tmp_path / "2_captioned.png")
    assert text == tool_caption(run_dir, tiny_world, "--points", f"{scene}_aligned_vert.npy", "--box3d", *box)


def test_bad_inputs_show_a_message_not_a_traceback(browser, tiny_world, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not pixels")
    upload(browser, "image-file", not_an_image)
    wait_for(browser, lambda d: "not an image" in text_of(d, "image-message"), "the not-an-image message")
    screenshot(browser, tmp_path / "1_not_an_image.png")

    browser.refresh()  # a fresh page: the file field holds the bad upload
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#image-file input[type=file]"), "the page")
    upload(browser, "image-file", first_image(tiny_world))
    wait_for(browser, lambda d: "96x96 image" in text_of(d, "image-message"), "the image loaded")
    for name, value in zip(("x1", "y1", "x2", "y2"), ("10", "10", "400", "50")):
        type_number(browser, f"box-{name}", value)
    browser.find_element(By.ID, "image-caption-button").click()
    wait_for(browser, lambda d: "lies outside the 96x96 image" in text_of(d, "image-message"), "the box refusal")
    assert browser.find_element(By.CSS_SELECTOR, "#image-caption textarea").get_attribute("value") == ""
    screenshot(browser, tmp_path / "2_box_outside.png")

    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Point cloud')]").click()
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(12, dtype=np.float32))
    upload(browser, "points-file", flat)
    wait_for(browser, lambda d: "expected an [N, >=3] array" in text_of(d, "points-message"), "the shape message")
    screenshot(browser, tmp_path / "3_wrong_shape.png")
    assert "Traceback" not in browser.page_source
