"""The annotation page's web app (Flask): the page, one pair at a time, and judgements into the Store.

  GET  /                  the page (page/index.html, app.js, app.css: no build step)
  GET  /api/pair          a new pair {id, prompt, a, b, count} for ?annotator=NAME
  POST /api/judgement     {id, choice: "a" | "b" | "tie", annotator} -> {count}

With a token, every request must carry it: as ?token=... (the link people open; the reply sets it as a
SameSite=Strict, HttpOnly cookie, which the browser then sends with every request of the page) or as that cookie;
anything else is refused (403) before it reaches a route. Model text and names reach the page only as JSON and are
put in with textContent, never parsed as HTML; the page's Content-Security-Policy allows no inline script either.
A pair is served once and judged once: its id is forgotten when judged, so a resubmission cannot count twice.
"""
import collections
import hmac
import importlib.resources
import secrets
import threading

import flask

from lm.annotate import store as store_lib

COOKIE = "lm_annotate_token"
MAX_PENDING = 10000  # pairs served but not yet judged, oldest forgotten first
MAX_NAME = 80
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'"


def _page(name: str) -> bytes:
  return importlib.resources.files("lm.annotate").joinpath("page", name).read_bytes()


def create_app(next_pair, db_path: str, token: str = "") -> flask.Flask:
  """next_pair() -> (prompt, a, b, settings); judgements go to the SQLite database at db_path."""
  app = flask.Flask(__name__)
  store = store_lib.Store(db_path)
  pending, lock = collections.OrderedDict(), threading.Lock()
  files = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
           "/app.css": ("app.css", "text/css")}

  @app.before_request
  def check_token():
    if not token:
      return None
    given = flask.request.args.get("token") or flask.request.cookies.get(COOKIE) or ""
    if not hmac.compare_digest(given.encode(), token.encode()):
      return flask.jsonify(error="this page needs its access token: open the link the server printed"), 403
    return None

  @app.after_request
  def headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    if token and flask.request.args.get("token"):
      response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
    return response

  @app.get("/")
  @app.get("/app.js")
  @app.get("/app.css")
  def page():
    name, kind = files[flask.request.path]
    return flask.Response(_page(name), mimetype=kind)

  def annotator_name(value) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name or len(name) > MAX_NAME:
      flask.abort(flask.make_response(flask.jsonify(error=f"enter a name (1-{MAX_NAME} characters)"), 400))
    return name

  @app.get("/api/pair")
  def pair():
    name = annotator_name(flask.request.args.get("annotator"))
    prompt, a, b, settings = next_pair()
    pair_id = secrets.token_urlsafe(12)
    with lock:
      pending[pair_id] = (prompt, a, b, settings)
      while len(pending) > MAX_PENDING:
        pending.popitem(last=False)
    return flask.jsonify(id=pair_id, prompt=prompt, a=a, b=b, count=store.count(name))

  @app.post("/api/judgement")
  def judgement():
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("choice") not in store_lib.CHOICES:
      return flask.jsonify(error="send JSON {id, choice: a|b|tie, annotator}"), 400
    name = annotator_name(body.get("annotator"))
    with lock:
      item = pending.pop(str(body.get("id")), None)
    if item is None:
      return flask.jsonify(error="this pair was already judged or has expired; the page will fetch another"), 409
    prompt, a, b, settings = item
    try:
      count = store.add(name, prompt, a, b, body["choice"], settings)
    except Exception:  # not stored: put the pair back so the annotator can submit it again
      with lock:
        pending[str(body["id"])] = item
      raise
    return flask.jsonify(count=count)

  return app


def serve(app, host: str, port: int):
  """A threaded server (one thread per request); returns it, not yet serving (call serve_forever)."""
  from werkzeug.serving import make_server
  return make_server(host, port, app, threaded=True)
