"""Lesson 01 client: send a greeting to /infer and print the answer.

    python client.py                       -> Hi there! Bye!
    python client.py --url http://127.0.0.1:8080/infer
"""

import argparse

import requests


def infer(url: str, payload: bytes) -> requests.Response:
    response = requests.post(url, data=payload, timeout=10)
    response.raise_for_status()  # turn a 4xx/5xx into an exception, not a silent wrong answer
    return response


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000/infer")
    parser.add_argument("message", nargs="?", default="Hi there!")
    args = parser.parse_args()
    print(infer(args.url, args.message.encode("utf-8")).text)
