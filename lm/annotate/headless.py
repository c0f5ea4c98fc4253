"""Headless Chromium for the page's browser tests and its screenshot: Debian's chromium driven through its
chromium-driver by Selenium (no browser download; .ci/run installs both packages). Chromium needs a fresh profile
directory and, on a machine without a network, no background connections (they are refused by the dozen)."""
import shutil

from lm.errors import UserError

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def chromium(profile_dir: str, width: int = 1000, height: int = 640):
  """A Selenium driver of headless Chromium with a fresh profile in `profile_dir`."""
  browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
  if not (browser and driver):
    raise UserError("chromium and chromedriver are missing: apt-get install chromium chromium-driver")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile_dir}"):
    options.add_argument(flag)
  d = webdriver.Chrome(service=Service(driver), options=options)
  d.set_page_load_timeout(30)
  return d
