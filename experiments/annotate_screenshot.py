"""The annotation page as a person sees it, for the README: serve a checkpoint's answers to a few held-out 4-digit
addition problems (python -m lm.annotate serve, in-process), open it in headless Chromium, enter a name, and save
a screenshot.

  python experiments/annotate_screenshot.py --checkpoint=runs/sft_addition_mix --out=experiments/annotate.png
"""
import argparse
import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--out", default="experiments/annotate.png")
  p.add_argument("--width", type=int, default=900)
  p.add_argument("--height", type=int, default=520)
  args = p.parse_args()
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait

  from lm import tasks
  from lm.annotate import headless
  from lm.annotate import sampler as sampler_lib
  from lm.annotate import server
  work = tempfile.mkdtemp(prefix="annotate-shot-")
  prompts = os.path.join(work, "prompts.txt")
  task = tasks.get("addition", digits=4, pad=True, width=4)
  with open(prompts, "w") as f:
    f.write("\n".join(ex.prompt for ex in task.examples("test", 20, seed=5)) + "\n")
  sample = sampler_lib.Sampler(args.checkpoint, prompts, temperature=1.0, max_new_tokens=8, seed=2)
  httpd = server.serve(server.create_app(sample, os.path.join(work, "judgements.db"), "token"), "127.0.0.1", 0)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  driver = headless.chromium(os.path.join(work, "profile"), args.width, args.height)
  try:
    driver.get(f"http://127.0.0.1:{httpd.server_port}/?token=token")
    driver.find_element("id", "name").send_keys("Ada", Keys.TAB)
    WebDriverWait(driver, 60).until(lambda d: d.find_element("id", "choose-a").is_enabled())
    driver.find_element("id", "choose-a").click()  # one judgement made, so the page shows its status line
    WebDriverWait(driver, 60).until(lambda d: d.find_element("id", "count").text == "1"
                                    and d.find_element("id", "choose-a").is_enabled())
    driver.save_screenshot(args.out)
  finally:
    driver.quit()
    httpd.shutdown()
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
