"""The guide: it builds strictly, every page works in a real browser with no
internet, and it never tells a learner to run something that does not exist.

    .venv/bin/pytest checks/test_guide.py

The site is built into site/ (the same folder `./workshop.sh check` builds),
and screenshots of two pages land in site/screenshots/ for a human to look at.
The browser part needs Debian's `chromium`; without it those checks are
skipped, saying so (and fail instead under CI, where setup installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
DOCS = ROOT / "docs"
SCREENSHOTS = {"home.png": "", "lesson-04-nginx.png": "lessons/04-nginx/"}
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}

# The guide's mkdocs hooks.
_spec = importlib.util.spec_from_file_location("guide_hooks", ROOT / "scripts/docs/hooks.py")
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)


# ---------------------------------------------------------------- the build

@pytest.fixture(scope="module")
def site() -> Path:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, \
        "mkdocs build --strict failed (a missing include, a broken link, a bad quote?):\n" + \
        "\n".join((out.stdout + out.stderr).splitlines()[-25:])
    return SITE


def pages(site: Path) -> list[str]:
    """Every page's URL path, e.g. '' for the home page, 'lessons/01-echo/'."""
    found = []
    for html in sorted(site.rglob("index.html")):
        rel = html.parent.relative_to(site).as_posix()
        if rel.split("/")[0] in ("assets", "search", "screenshots"):
            continue
        found.append("" if rel == "." else rel + "/")
    return found


def test_guide_builds_with_every_page(site):
    md_pages = sorted(p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md"))
    built = pages(site)
    expected = ["" if p == "index" else p + "/" for p in md_pages]
    assert sorted(built) == sorted(expected), f"pages built {built}, docs have {expected}"
    assert (site / "assets/vendor/mermaid.min.js").stat().st_size > 1_000_000, \
        "mermaid.min.js missing from the site: the diagrams would need a CDN"


# ------------------------------------------------ exercise markers stay out

def test_no_exercise_markers_in_the_guide(site):
    """The lesson files the guide shows are the solutions, without exercise markers;
    each lesson's page lists its exercises instead (scripts/docs/hooks.py)."""
    marker = re.compile(r"(?:EXERCISE \d\d\.\d+:|END EXERCISE|STUB:)")
    leaked = []
    for page in sorted(site.rglob("*")):
        if page.suffix in (".html", ".json", ".xml") and "assets" not in page.relative_to(site).parts:
            text = unescape(re.sub(r"<[^>]+>", "", page.read_text(errors="replace")))
            leaked += [f"{page.relative_to(site)}: ...{m.group(0)}..." for m in marker.finditer(text)]
    assert not leaked, "exercise markers leaked into the guide:\n" + "\n".join(leaked[:10])
    for lesson_page in sorted((site / "lessons").glob("0[1-5]-*/index.html")):
        number = lesson_page.parent.name[:2]
        assert f"<strong>{number}.1</strong>" in lesson_page.read_text(), \
            f"{lesson_page.relative_to(site)} does not list its exercises ({number}.1, ...)"


# ---------------------------------------------------- nothing off the machine

REF = re.compile(r"""<(script|link|img|iframe|source|audio|video)\b[^>]*?\b(src|href|srcset)\s*=\s*["']([^"']+)["']""", re.I)
CSS_URL = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])(https?:)?//([^/"')\s]+)""", re.I)


def off_machine(url: str) -> bool:
    parsed = urlparse(url if "//" in url else "")
    return bool(parsed.netloc) and parsed.hostname not in LOOPBACK


def test_pages_load_nothing_from_other_hosts(site):
    bad = []
    for html in site.rglob("*.html"):
        for tag, attr, url in REF.findall(html.read_text(errors="replace")):
            for one in unescape(url).split(","):
                one = one.strip().split(" ")[0]
                if off_machine(one):
                    bad.append(f"{html.relative_to(site)}: <{tag} {attr}={one}>")
    for css in site.rglob("*.css"):
        for _, host in CSS_URL.findall(css.read_text(errors="replace")):
            if host not in LOOPBACK:
                bad.append(f"{css.relative_to(site)}: url(//{host}/...)")
    assert not bad, "the guide would load these from the internet:\n" + "\n".join(sorted(set(bad))[:20])


# ------------------------------------------------------------ the browser

def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = "chromium is not installed (Debian: apt-get install chromium); the browser checks need it"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI must have it: scripts/setup.sh installs it")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def served(site):
    """The site on 127.0.0.1 (a free port), with the diagram probe; always stopped."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/docs/probe_server.py"), str(site), "--probe"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("PORT "), f"the test server did not start: {first}{proc.stdout.read()}"
        requests_seen: list[str] = []
        def read():
            for line in iter(proc.stdout.readline, ""):
                if line.strip():
                    requests_seen.append(line.strip())
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        yield f"http://127.0.0.1:{int(first.split()[1])}/", requests_seen
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-client-side-phishing-detection", "--disable-domain-reliability",
    "--no-pings", "--disable-features=AutofillServerCommunication,OptimizationHints,Translate,MediaRouter",
    # Nothing but loopback resolves: a request to another host cannot leave, and shows in the net log.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--virtual-time-budget=5000", "--window-size=1280,900",
]


def run_browser(chromium: str, url: str, *extra: str) -> tuple[str, list[dict]]:
    """Open url in a fresh headless profile; return (stdout, URL requests from its net log)."""
    with tempfile.TemporaryDirectory(prefix="guide-chromium-") as tmp:
        netlog = Path(tmp) / "net.json"
        out = subprocess.run([chromium, *BROWSER_FLAGS, f"--user-data-dir={tmp}/profile",
                              f"--log-net-log={netlog}", *extra, url],
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, f"chromium exited with {out.returncode} on {url}:\n{out.stderr[-2000:]}"
        return out.stdout, url_requests(netlog)


def url_requests(netlog: Path) -> list[dict]:
    text = netlog.read_text(errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):
        text += "]}"  # a log cut short at exit: close the events list
    log = json.loads(text)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"] for e in log.get("events", [])
            if e["type"] == start_job and "url" in e.get("params", {})]


def page_initiated(request: dict, page_url: str) -> bool:
    """Asked for by the page (its scripts, styles, images) or the page itself.

    Chromium's own background traffic (update checks, sign-in, clock) has no
    page as initiator; it cannot leave either (nothing resolves), and is not
    the guide's doing.
    """
    initiator = request.get("initiator", "")
    return initiator.startswith("http") or request["url"] == page_url


def test_every_page_works_offline_in_a_browser(site, chromium, served):
    base, requests_seen = served
    expected_diagrams = {p: (site / p / "index.html").read_text().count('class="mermaid"') for p in pages(site)}

    def visit(page: str):
        dom, reqs = run_browser(chromium, base + page, "--dump-dom")
        return page, dom, reqs

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(visit, pages(site)))

    problems = []
    for page, dom, reqs in results:
        where = "/" + page
        m = re.search(r'data-guide-probe="([^"]*)"', dom)
        if not m:
            problems.append(f"{where}: did not load (no probe result in the DOM)")
            continue
        probe = json.loads(unescape(m.group(1)))
        if "<h1" not in dom:
            problems.append(f"{where}: no <h1> heading: the page's content did not render")
        if probe["errors"]:
            problems.append(f"{where}: JavaScript errors: {probe['errors'][:3]}")
        want = expected_diagrams[page]
        if probe["drawn"] != want or probe["broken"] or probe["undrawn"]:
            problems.append(f"{where}: {want} mermaid diagram(s) in the page, {probe['drawn']} drawn as SVG, "
                            f"{probe['broken']} broken, {probe['undrawn']} never drawn")
        leaving = sorted({r["url"] for r in reqs
                          if page_initiated(r, base + page) and urlparse(r["url"]).hostname not in LOOPBACK})
        if leaving:
            problems.append(f"{where}: requests to other hosts: {leaving[:5]}")
        if not any(r["url"] == base + page for r in reqs):
            problems.append(f"{where}: the net log shows no request for the page itself")
    failed = [line for line in requests_seen if not line.startswith(("200", "304"))]
    if failed:
        problems.append(f"the site answered these requests with an error: {sorted(set(failed))[:10]}")
    assert not problems, "\n".join(problems)


def test_screenshots_for_a_human(site, chromium, served):
    base, _ = served
    folder = site / "screenshots"
    folder.mkdir(exist_ok=True)
    for name, page in SCREENSHOTS.items():
        shot = folder / name
        shot.unlink(missing_ok=True)
        run_browser(chromium, base + page, f"--screenshot={shot}")
        assert shot.exists() and shot.stat().st_size > 20_000, f"no useful screenshot of /{page} at {shot}"


# ------------------------------------------------ no stale instructions

FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
WORKSHOP = re.compile(r"\./workshop\.sh(?:[ \t]+([a-z][\w-]*))?(?:[ \t]+(\d\d))?")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:lessons|checks|scripts|workshop|bench)/[\w./-]*)")
VENV_TOOL = re.compile(r"(?<![\w/-])\.venv/bin/([\w.-]+)")
PY_MODULE = re.compile(r"\bpython3?\s+-m\s+([\w.]+)")


def instructions(text: str) -> list[str]:
    """Code a learner is told to run or look at: fenced blocks and `inline code`."""
    chunks = [m.group(2) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    chunks += INLINE.findall(prose)
    # Includes are checked by the strict build (snippets' check_paths), not here.
    return ["\n".join(l for l in c.splitlines() if "--8<--" not in l) for c in chunks]


def workshop_commands() -> set[str]:
    script = (ROOT / "workshop.sh").read_text()
    body = script[script.index("case "):script.index("esac")]
    arms = re.findall(r"^\s*([a-z][\w|-]*)\)", body, re.M)
    return {name for arm in arms for name in arm.split("|")}


def test_docs_name_only_things_that_exist():
    sources = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
    commands = workshop_commands()
    stale = []
    for source in sources:
        where = source.relative_to(ROOT)
        for chunk in instructions(source.read_text()):
            for sub, lesson in WORKSHOP.findall(chunk):
                if sub and sub not in commands:
                    stale.append(f"{where}: ./workshop.sh {sub} (workshop.sh has: {', '.join(sorted(commands))})")
                if sub == "check" and lesson and not list((ROOT / "checks").glob(f"test_{lesson}*.py")):
                    stale.append(f"{where}: ./workshop.sh check {lesson} (no checks/test_{lesson}_*.py)")
            for path in REPO_PATH.findall(chunk):
                path = path.rstrip(".,:;")
                if "*" in path or "<" in path:
                    continue
                if not (ROOT / path).exists():
                    stale.append(f"{where}: {path} does not exist")
            for tool in VENV_TOOL.findall(chunk):
                if (ROOT / ".venv/bin").is_dir() and not (ROOT / ".venv/bin" / tool).exists():
                    stale.append(f"{where}: .venv/bin/{tool} is not in the virtualenv")
            for module in PY_MODULE.findall(chunk):
                local = ROOT / Path(*module.split("."))
                if not (local.with_suffix(".py").exists() or (local / "__init__.py").exists()
                        or importlib.util.find_spec(module.split(".")[0])):
                    stale.append(f"{where}: python -m {module}: no such module")
    assert not stale, "the docs tell learners to use things that do not exist:\n" + "\n".join(sorted(set(stale)))


def test_the_stale_check_catches_stale_things(tmp_path):
    """The check above is only worth something if it fails on a stale line."""
    chunk = instructions("Run `./workshop.sh frobnicate` then\n```bash\nlessons/07_magic/run.sh\n```\n")
    assert any(sub == "frobnicate" for c in chunk for sub, _ in WORKSHOP.findall(c))
    assert "frobnicate" not in workshop_commands()
    assert any(not (ROOT / p).exists() for c in chunk for p in REPO_PATH.findall(c))
