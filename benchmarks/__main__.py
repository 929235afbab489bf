"""``python -m benchmarks [all|inprocess|http|profile ARM|serve ARM]``; ``make bench`` runs ``all``.

all        both harnesses, then the results table into docs/benchmarks.md (``--no-write``: print only)
           (every command but ``serve`` starts a Redis server of its own unless MG_BENCH_REDIS names one)
inprocess  the raw ASGI harness only, printed
http       the uvicorn + wrk harness only, printed
profile    one arm in the in-process loop under pyinstrument (``--cprofile`` for cProfile): top functions
serve      one arm under uvicorn (what the HTTP harness starts in a subprocess)
"""

from __future__ import annotations

import argparse
import json
import sys

from ._common import private_redis
from .arms import IN_PROCESS_ARMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    everything = commands.add_parser("all", help="both harnesses, then write docs/benchmarks.md")
    everything.add_argument("--no-write", action="store_true", help="print the table, leave the doc alone")
    commands.add_parser("inprocess", help="the raw ASGI harness only")
    commands.add_parser("http", help="the uvicorn + wrk harness only")
    prof = commands.add_parser("profile", help="profile one arm in the in-process loop")
    prof.add_argument("arm", choices=IN_PROCESS_ARMS)
    prof.add_argument("--requests", type=int, default=20000)
    prof.add_argument("--top", type=int, default=30)
    prof.add_argument("--cprofile", action="store_true", help="cProfile (deterministic) instead of pyinstrument")
    prof.add_argument("--tree", action="store_true", help="also print pyinstrument's call tree")
    srv = commands.add_parser("serve", help="serve one arm under uvicorn (used by the HTTP harness)")
    srv.add_argument("arm", choices=IN_PROCESS_ARMS)
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--prefix", required=True)
    srv.add_argument("--keys-file", required=True)
    srv.add_argument("--keys", type=int, default=400)
    args = parser.parse_args(argv)
    command = args.command or "all"

    if command == "serve":
        from .http import serve

        serve(args.arm, port=args.port, prefix=args.prefix, keys_file=args.keys_file, keys=args.keys)
        return 0
    if command == "profile":
        from .inprocess import profile

        with private_redis():
            profile(args.arm, requests=args.requests, top=args.top, use_cprofile=args.cprofile, tree=args.tree)
        return 0

    from . import http, inprocess, report

    in_results = http_results = None
    with private_redis() as private:
        if private:
            print(f"Redis: a server of this run's own at {private}", file=sys.stderr)
        env = report.environment(private_redis=private is not None)
        if command in ("all", "inprocess"):
            print("in-process harness ...", file=sys.stderr)
            in_results = inprocess.run()
            print(json.dumps(in_results, indent=1), file=sys.stderr)
        if command in ("all", "http"):
            print("HTTP harness ...", file=sys.stderr)
            http_results = http.run()
            print(json.dumps(http_results, indent=1), file=sys.stderr)
    block = report.render(env, in_results, http_results)
    print(block)
    if command == "all" and not getattr(args, "no_write", False):
        report.write_doc(block)
        print(f"\nwritten to {report.DOC.relative_to(report.ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
