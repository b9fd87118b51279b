"""Lesson 07's picture: picture.py draws what Prometheus recorded of a load run, and the
guide's copy is such a picture. Both are judged by the series they carry (the PNG's
"series" text chunk), not by being a file."""

from __future__ import annotations

import json
import math
import shutil
import sys

from PIL import Image

from workshop.harness import make_run_dir, started, stop
from workshop.lessons import ROOT

GUIDE_PICTURE = ROOT / "docs/assets/lessons/07-load-run.png"
RATE_WINDOW = 5 + 2   # rules.yml's rate window, plus a scrape and an evaluation
# picture.py kills upstream 2 for the middle half: 9 s, so that a few scrapes
# fall after the rate window has forgotten it (RATE_WINDOW + 2).
SECONDS = 18


def series_of(png) -> dict:
    with Image.open(png) as img:
        assert "series" in img.text, f"{png} carries no series: not drawn by lessons/07_metrics/picture.py"
        return json.loads(img.text["series"])


def values(points: list, start: float, end: float) -> list[float]:
    return [v for t, v in points if start <= t <= end]


def assert_shows_a_failover(data: dict, where: str) -> None:
    ev, s = data["events"], data["series"]
    assert ev["start"] < ev["killed"] < ev["restarted"] < ev["serving"] < ev["end"], f"{where}: events {ev}"
    outcomes = data["outcomes"]
    assert sum(outcomes.values()) > 0 and set(outcomes) == {"200"}, \
        f"{where}: every request of the run should have been answered 200 (nginx fails over): {outcomes}"
    rate = s["requests_per_s"]
    assert set(rate) == {"uwsgi1", "uwsgi2"}, f"{where}: requests/s drawn for {sorted(rate)}"
    assert max(values(rate["uwsgi2"], ev["start"], ev["killed"]), default=0) > 0, \
        f"{where}: upstream 2 served nothing before it was killed"
    # Dead, its series has no points at all (a down target's rate goes stale), or zeros; but
    # only a window of a few scrapes could catch a wrong one, so the run must leave one.
    assert ev["restarted"] - (ev["killed"] + RATE_WINDOW) >= 2, \
        f"{where}: upstream 2 was dead for {ev['restarted'] - ev['killed']:.0f} s, too short to see its rate " \
        f"fall (the rate window is {RATE_WINDOW} s): run longer (--seconds)"
    dead = values(rate["uwsgi2"], ev["killed"] + RATE_WINDOW, ev["restarted"])
    assert not any(v > 0 for v in dead), f"{where}: upstream 2 shows traffic while it was dead: {dead}"
    assert max(values(rate["uwsgi2"], ev["serving"], ev["end"] + 2), default=0) > 0, \
        f"{where}: upstream 2 shows no traffic after it came back"
    served = values(s["served"]["uwsgi1"], ev["killed"], ev["serving"])
    assert served and served[-1] > served[0], \
        f"{where}: upstream 1 should have served while upstream 2 was down: its count went {served[:1] + served[-1:]}"
    assert 0.0 in values(s["up"].get("uwsgi2", []), ev["killed"], ev["serving"]), \
        f"{where}: Prometheus' up for upstream 2 never went to 0"
    for upstream in ("uwsgi1", "uwsgi2"):
        p50, p95, p99 = (dict(map(tuple, s[q].get(upstream, []))) for q in ("p50_s", "p95_s", "p99_s"))
        # NaN where a 5 s window saw no answer (histogram_quantile of nothing)
        both = [t for t in p50 if t in p99 and t in p95 and t < ev["killed"]
                and not any(math.isnan(q[t]) for q in (p50, p95, p99))]
        assert both, f"{where}: no latency percentiles for {upstream} before the kill"
        wrong = [(p50[t], p95[t], p99[t]) for t in both if not p50[t] <= p95[t] <= p99[t]]
        assert not wrong, f"{where}: p50 <= p95 <= p99 should hold for {upstream}: {wrong[:3]}"
        flight = [v for _, v in s["in_flight"].get(upstream, [])]
        assert flight and all(0 <= v <= 1 for v in flight), \
            f"{where}: {upstream} (one worker) shows {sorted(set(flight))} requests in flight"
    assert s["at_nginx"], f"{where}: no series of requests at nginx"


def test_picture_draws_a_run_with_upstream_2_killed_and_back(lessons, tmp_path):
    out = tmp_path / "run.png"
    run_dir = make_run_dir()
    picture = started("picture", [sys.executable, str(lessons / "07_metrics" / "picture.py"),
                                  "--seconds", str(SECONDS), "--out", str(out)], run_dir=run_dir)
    try:
        code = picture.proc.wait(timeout=220)
    finally:
        stop(picture)   # it stops its own stack; whatever would be left, this stops
        shutil.rmtree(run_dir, ignore_errors=True)
    assert code == 0 and out.is_file(), f"picture.py exited with {code}:\n{picture.log(30)}"
    assert_shows_a_failover(series_of(out), "the picture")


def test_the_guides_picture_is_such_a_run():
    assert GUIDE_PICTURE.is_file(), f"{GUIDE_PICTURE.relative_to(ROOT)} is missing: make it with " \
        "lessons/07_metrics/picture.py --out docs/assets/lessons/07-load-run.png"
    assert_shows_a_failover(series_of(GUIDE_PICTURE), GUIDE_PICTURE.name)
