"""Evaluates a Tiltfile with Google's Starlark (what Tilt embeds) and a recording stand-in
for Tilt's custom_build; prints each call's arguments as one JSON line.

    python eval_tiltfile.py TILTFILE SCRIPT

SCRIPT is Starlark run after the Tiltfile, in the same globals (e.g. calls of kiln_build).
"""
import ast
import json
import sys

import starlark_go

STAND_INS = '''
def custom_build(ref, command, deps, **kwargs):
    print(repr({"ref": ref, "command": command, "deps": deps, "kwargs": kwargs}))
def sync(src, dest):
    return {"sync": [src, dest]}
'''


def main():
    tiltfile, script = sys.argv[1], sys.argv[2]
    printed = []
    star = starlark_go.Starlark()
    star.print = printed.append
    star.exec(STAND_INS)
    with open(tiltfile, encoding="utf-8") as f:
        star.exec(f.read())
    star.exec(script)
    for line in printed:
        print(json.dumps(ast.literal_eval(line)))


if __name__ == "__main__":
    main()
