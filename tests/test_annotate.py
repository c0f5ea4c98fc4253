"""The annotation page in a real headless browser (Debian's chromium driven by Selenium through chromium-driver;
.ci/run installs both): clicks and the 1 / 2 / 0 keys record the right choice, two annotators at once both land,
a request without the token is refused, a <script> answer shows as text. One server and one browser for the
module. The export and its bad inputs run through the command line."""
import concurrent.futures
import itertools
import json
import shutil
import sqlite3
import tempfile
import threading
import types
import urllib.error
import urllib.request

import pytest

from tests.conftest import one_line_error, snapshot

TOKEN = "s3cret-token"
SCRIPT = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"


def stub_pairs():
  """Pairs whose answers say which pair they are; answer b is markup a page must not run."""
  counter, lock = itertools.count(), threading.Lock()

  def next_pair():
    with lock:
      i = next(counter)
    return f"{i:04d}+0001=", f"answer {i}", f"{SCRIPT} {i}", {"stub": True, "sample": i}

  return next_pair


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  from lm.annotate import server as server_lib
  db = str(tmp_path_factory.mktemp("annotate") / "judgements.db")
  httpd = server_lib.serve(server_lib.create_app(stub_pairs(), db, TOKEN), "127.0.0.1", 0)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield {"url": f"http://127.0.0.1:{httpd.server_port}", "db": db}
  httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
  from lm.annotate import headless
  profile = tempfile.mkdtemp(prefix="chromium-profile-")
  driver = headless.chromium(profile)
  yield driver
  driver.quit()
  shutil.rmtree(profile, ignore_errors=True)


def judgements(db: str, annotator: str) -> list:
  with sqlite3.connect(db) as conn:
    return conn.execute("SELECT prompt, answer_a, answer_b, choice, settings FROM judgements WHERE annotator = ? "
                        "ORDER BY id", (annotator,)).fetchall()


def open_page(driver, url: str, name: str):
  """Open the page with the token, enter a name, wait for the first pair."""
  from selenium.webdriver.common.keys import Keys
  driver.get(f"{url}/?token={TOKEN}")
  driver.execute_script("localStorage.clear()")  # start without a remembered name, so one pair is fetched
  driver.get(f"{url}/?token={TOKEN}")
  box = driver.find_element("id", "name")
  box.clear()
  box.send_keys(name, Keys.TAB)  # the change event fetches a pair
  return wait_new_pair(driver, "")


def wait_new_pair(driver, old: str) -> dict:
  """Wait until the page shows a pair other than `old`; return what it shows."""
  from selenium.webdriver.support.ui import WebDriverWait
  WebDriverWait(driver, 20).until(lambda d: d.find_element("id", "pair").get_attribute("data-pair") not in ("", old)
                                  and d.find_element("id", "choose-a").is_enabled())
  text = lambda i: driver.execute_script(f"return document.getElementById('{i}').textContent")
  return {"id": driver.find_element("id", "pair").get_attribute("data-pair"), "prompt": text("prompt"),
          "a": text("a"), "b": text("b")}


def test_clicks_and_keys_record_the_right_choice(server, browser, tmp_path):
  from selenium.webdriver.common.action_chains import ActionChains
  shown, made = [open_page(browser, server["url"], "ada <i>lovelace</i>")], []
  actions = [("click", "choose-a", "a"), ("key", "2", "b"), ("key", "0", "tie"), ("click", "choose-b", "b"),
             ("key", "1", "a"), ("click", "choose-tie", "tie")]
  for how, what, choice in actions:
    if how == "click":
      browser.find_element("id", what).click()
    else:
      ActionChains(browser).send_keys(what).perform()
    made.append(choice)
    shown.append(wait_new_pair(browser, shown[-1]["id"]))
  rows = judgements(server["db"], "ada <i>lovelace</i>")
  assert [r[3] for r in rows] == made
  assert [(r[0], r[1], r[2]) for r in rows] == [(s["prompt"], s["a"], s["b"]) for s in shown[:-1]]
  assert all(json.loads(r[4])["stub"] for r in rows)  # the sampling settings travel with each judgement
  assert browser.find_element("id", "count").text == str(len(made))
  assert browser.find_element("id", "status").text == "saved: tie"
  browser.save_screenshot(str(tmp_path / "page.png"))
  assert (tmp_path / "page.png").stat().st_size > 1000


def test_script_answer_shows_as_text(server, browser):
  shown = open_page(browser, server["url"], "mallory")
  assert shown["b"].startswith(SCRIPT)  # the markup is the text on the page ...
  assert browser.find_element("id", "b").text.startswith("<script>")
  assert browser.find_elements("css selector", "#b script, #b img, main script") == []  # ... and never elements
  assert browser.execute_script("return window.__pwned === undefined")


def test_two_annotators_at_once_both_land(server, browser):
  first = open_page(browser, server["url"], "ann one")
  tab_one = browser.current_window_handle
  browser.switch_to.new_window("tab")
  second = open_page(browser, server["url"], "ann two")
  tab_two = browser.current_window_handle
  from selenium.webdriver.common.action_chains import ActionChains
  for tab, shown, key in ((tab_one, first, "1"), (tab_two, second, "2"), (tab_one, None, "2"),
                          (tab_two, None, "0")):
    browser.switch_to.window(tab)
    before = browser.find_element("id", "pair").get_attribute("data-pair")
    ActionChains(browser).send_keys(key).perform()
    wait_new_pair(browser, before)
  browser.close()
  browser.switch_to.window(tab_one)
  assert [r[3] for r in judgements(server["db"], "ann one")] == ["a", "b"]
  assert [r[3] for r in judgements(server["db"], "ann two")] == ["b", "tie"]

  # and many requests at the same moment: 2 annotators x 25 judgements from 8 threads, none lost
  def judge(args):
    name, i = args
    pair = http_json(f"{server['url']}/api/pair?annotator={name.replace(' ', '+')}&token={TOKEN}")
    return http_json(f"{server['url']}/api/judgement?token={TOKEN}",
                     {"id": pair["id"], "choice": "ab"[i % 2], "annotator": name})
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(judge, [(name, i) for i in range(25) for name in ("thread one", "thread two")]))
  assert len(judgements(server["db"], "thread one")) == len(judgements(server["db"], "thread two")) == 25


def http_json(url: str, body=None):
  data = json.dumps(body).encode() if body is not None else None
  req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
  with urllib.request.urlopen(req, timeout=30) as r:
    return json.loads(r.read())


def test_request_without_the_token_is_refused(server, browser):
  with sqlite3.connect(server["db"]) as conn:
    before = conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
  pair = http_json(f"{server['url']}/api/pair?annotator=x&token={TOKEN}")
  for path, body in (("/", None), ("/app.js", None), ("/api/pair?annotator=x", None),
                     ("/api/judgement", {"id": pair["id"], "choice": "a", "annotator": "x"}),
                     ("/api/judgement?token=wrong", {"id": pair["id"], "choice": "a", "annotator": "x"})):
    with pytest.raises(urllib.error.HTTPError) as e:
      http_json(server["url"] + path, body)
    assert e.value.code == 403, path
  with sqlite3.connect(server["db"]) as conn:
    assert conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == before
  browser.delete_all_cookies()
  browser.get(server["url"] + "/")
  assert "access token" in browser.find_element("tag name", "body").text
  assert browser.find_elements("id", "choose-a") == []


def annotate(capsys, *args):
  """`python -m lm.annotate ARGS` in this process: (returncode, stdout, stderr) as a subprocess would give them."""
  from lm.annotate import __main__ as cli
  capsys.readouterr()
  try:
    cli.main(list(args))
    code = 0
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_export_writes_preferences_and_refuses_an_empty_database(tmp_path, capsys):
  from lm.annotate import store as store_lib
  from lm.data import preferences
  db = str(tmp_path / "j.db")
  store = store_lib.Store(db)
  out = tmp_path / "out.jsonl"
  r = annotate(capsys, "export", f"--db={db}", str(out))
  one_line_error(r, "holds 0 judgements", "not written")
  assert not out.exists()
  store.add("ada", "1+1=", "2", "3", "a", {})
  store.add("bob", "1+1=", "11", "2", "b", {})
  store.add("cy", "1+1=", "2", "3", "tie", {})
  store.add("dee", "1+1=", "2", "2", "a", {})  # identical answers: no preference
  kept = snapshot(tmp_path)["j.db"]
  r = annotate(capsys, "export", f"--db={db}", str(tmp_path / "missing" / "out.jsonl"))
  one_line_error(r, "cannot write")
  assert snapshot(tmp_path)["j.db"] == kept and not (tmp_path / "missing").exists()  # a failed export changes nothing
  r = annotate(capsys, "export", f"--db={db}", str(out))
  assert r.returncode == 0, r.stderr
  assert "wrote 2 pairs" in r.stdout and "1 ties" in r.stdout
  lines = out.read_text().splitlines()
  pairs = [preferences.parse_pair(line, f"out:{i}") for i, line in enumerate(lines, 1)]
  assert [(p["chosen"], p["rejected"], p["annotator"]) for p in pairs] == [("2", "3", "ada"), ("2", "11", "bob")]
  assert store.count() == 4  # exporting stores nothing and loses nothing


def test_serve_refuses_bad_input_without_touching_the_database(tmp_path, capsys, finished_run):
  from lm.annotate import store as store_lib
  (tmp_path / "db").mkdir()
  db = str(tmp_path / "db" / "j.db")
  store_lib.Store(db).add("ada", "p", "x", "y", "a", {})
  kept = snapshot(tmp_path / "db")
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("1+1=\n" + "x" * 40 + "\n")
  r = annotate(capsys, "serve", f"--checkpoint={finished_run}", f"--prompts={prompts}", f"--db={db}",
               "--max_new_tokens=8", "--port=0")
  one_line_error(r, f"{prompts}:2", "exceeds the model's context")
  bad_db = tmp_path / "notes.db"
  bad_db.write_text("not a database\n" * 100)
  prompts.write_text("1+1=\n")
  r = annotate(capsys, "serve", f"--checkpoint={finished_run}", f"--prompts={prompts}", f"--db={bad_db}",
               "--max_new_tokens=8", "--port=0")
  one_line_error(r, "is not a judgements database")
  assert bad_db.read_text() == "not a database\n" * 100
  assert snapshot(tmp_path / "db")["j.db"] == kept["j.db"] and store_lib.Store(db).count() == 1


def test_sampler_draws_two_answers_from_the_checkpoint(tmp_path, finished_run):
  from lm.annotate import sampler as sampler_lib
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text(json.dumps({"prompt": "12+30="}) + "\n\n" + json.dumps({"prompt": "17+25="}) + "\n")
  sample = sampler_lib.Sampler(str(finished_run), str(prompts), temperature=1.0, max_new_tokens=4, seed=3)
  drawn = [sample() for _ in range(3)]
  assert [d[0] for d in drawn] == ["12+30=", "17+25=", "12+30="]
  assert all(len(d[1].encode()) <= 12 and d[1] != d[2] for d in drawn)  # 4 tokens of at most 3 bytes shown
  assert drawn[0][3]["temperature"] == 1.0 and drawn[0][3]["checkpoint"] == str(finished_run)
