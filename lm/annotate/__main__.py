"""python -m lm.annotate serve --checkpoint=RUN --prompts=FILE --db=FILE [--host=127.0.0.1 --port=8000 --token=...]
python -m lm.annotate export --db=FILE OUT.jsonl

serve: a local page where people judge pairs of answers sampled from RUN's checkpoint (one prompt per line of
FILE, or JSONL {"prompt": ...}); judgements go to the SQLite database --db. It binds 127.0.0.1 unless --host says
otherwise; on any other address it needs an access token (--token, $LM_ANNOTATE_TOKEN, or a random one it prints),
which every request must carry. export: the judgements as JSONL preference pairs for configs/reward_model.py and
configs/dpo.py (objective.train_files).
"""
import argparse
import ipaddress
import logging
import os
import secrets
import sys

from lm.errors import UserError

LOOPBACK = ("localhost",)


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m lm.annotate", description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)
  s = sub.add_parser("serve", help="serve the annotation page")
  s.add_argument("--checkpoint", required=True, help="run directory whose model samples the answers")
  s.add_argument("--prompts", required=True, help="a text file (one prompt per line) or JSONL {\"prompt\": ...}")
  s.add_argument("--db", required=True, help="SQLite database of judgements (created if absent)")
  s.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback needs a token")
  s.add_argument("--port", type=int, default=8000)
  s.add_argument("--token", default=os.environ.get("LM_ANNOTATE_TOKEN", ""),
                 help="access token every request must carry ('' on loopback: none)")
  s.add_argument("--temperature", type=float, default=1.0)
  s.add_argument("--max_new_tokens", type=int, default=32)
  s.add_argument("--seed", type=int, default=0)
  e = sub.add_parser("export", help="write the judgements as JSONL preference pairs")
  e.add_argument("--db", required=True)
  e.add_argument("output", help="the .jsonl file to write")
  return p.parse_args(argv)


def is_loopback(host: str) -> bool:
  if host in LOOPBACK:
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def serve(args):
  from lm.annotate import sampler as sampler_lib
  from lm.annotate import server
  if args.temperature < 0 or args.max_new_tokens < 1:
    raise UserError("--temperature must be >= 0 and --max_new_tokens >= 1")
  token = args.token
  if not token and not is_loopback(args.host):
    token = secrets.token_urlsafe(16)  # never open to other machines without one
  sample = sampler_lib.Sampler(args.checkpoint, args.prompts, temperature=args.temperature,
                               max_new_tokens=args.max_new_tokens, seed=args.seed)
  app = server.create_app(sample, args.db, token)
  try:
    httpd = server.serve(app, args.host, args.port)
  except OSError as e:
    raise UserError(f"cannot serve on {args.host}:{args.port}: {e.strerror}") from None
  host = f"[{args.host}]" if ":" in args.host else args.host
  print(f"annotation page: http://{host}:{httpd.server_port}/" + (f"?token={token}" if token else ""), flush=True)
  print(f"{len(sample.prompts)} prompts; judgements go to {args.db}; Ctrl-C stops", flush=True)
  try:
    httpd.serve_forever()
  except KeyboardInterrupt:
    pass


def export(args):
  from lm.annotate import store
  counts = store.export(args.db, args.output)
  print(f"wrote {counts['pairs']} pairs to {args.output} ({counts['ties']} ties and {counts['identical']} pairs of "
        "identical answers left out)")


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs restores at INFO and WARNING
  try:
    serve(args) if args.command == "serve" else export(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
