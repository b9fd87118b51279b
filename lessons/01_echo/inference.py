"""Lesson 01: the smallest server that can answer POST /infer.

It does not know anything about models yet: it reads the bytes you send,
adds " Bye!" and sends them back. The point is to see the request/response
loop work before anything heavy is added.

Run it:  python inference.py          (listens on 127.0.0.1:5000)
"""

import os

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

app = Flask(__name__)


@app.post("/infer")
def infer():
    # EXERCISE 01.1: answer POST /infer with the body plus " Bye!"
    try:
        text = request.get_data().decode("utf-8")
    except UnicodeDecodeError:
        # Bad input is the client's fault: say so with a 4xx and a reason,
        # instead of letting the exception become a 500.
        return jsonify(error="the request body must be UTF-8 text"), 400
    return f"{text} Bye!"
    # END EXERCISE


@app.get("/healthz")
def healthz():
    # A cheap "are you alive?" URL for scripts, checks and load balancers.
    return jsonify(status="ok", pid=os.getpid())


@app.errorhandler(HTTPException)
def http_error(exc):
    # Flask's own errors (404, 405, ...) as JSON too, so clients parse one format.
    return jsonify(error=exc.description, status=exc.code), exc.code


if __name__ == "__main__":
    # 127.0.0.1, not 0.0.0.0: the development server should only be
    # reachable from this machine. HOST/PORT let you (and the checks) move it.
    app.run(host=os.environ.get("HOST", "127.0.0.1"),
            port=int(os.environ.get("PORT", "5000")))
