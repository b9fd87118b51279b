"""The guide: it builds strictly, every page works in a real browser with no
internet, and the words a learner reads are true: no command or file that
does not exist (in the docs, and in what the scripts, the harness and the
lessons print), no word about how the workshop was built, no measured figure
copied by hand (guide pages quote bench/results/results.json through
{{ bench.... }} placeholders, see scripts/docs/hooks.py), one duration for
the benchmark.

    .venv/bin/pytest checks/test_guide.py

The site is built into site/ (the same folder `./workshop.sh check` builds),
and screenshots of two pages land in site/screenshots/ for a human to look at.
The browser part needs Debian's `chromium`; without it those checks are
skipped, saying so (and fail instead under CI, where setup installs it).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from pathlib import Path
from urllib.parse import urlparse

import pytest

from checks.utils import docs_hooks

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
DOCS = ROOT / "docs"
SCREENSHOTS = {"home.png": "", "lesson-04-nginx.png": "lessons/04-nginx/"}
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}

# The guide's mkdocs hooks: the placeholder syntax for benchmark figures, and its resolver.
hooks = docs_hooks()


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
    """Every page's URL path inside the site: '' for the home page, then each lesson's folder and so on."""
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
# (the chromium fixture is in conftest.py)

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
WORKSHOP = re.compile(r"\./workshop\.sh(?:[ \t]+([a-z][\w-]*))?(?:[ \t](?!-)([\w.]+))?")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:lessons|checks|scripts|workshop|bench|tools)/[\w./{}$*<>-]*)")
VENV_TOOL = re.compile(r"(?<![\w/-])\.venv/bin/([\w.-]+)")
PY_MODULE = re.compile(r"\bpython3?\s+-m\s+([\w.]+)")
# `make X` as a command ("run `make setup`"), not the verb ("make sure").
MAKE = re.compile(r"(?:[`'\"]|\brun\s+|\btry\s+)make\s+([\w-]+)")
# What stands for a name in a path segment: {lesson}, $LESSON, ${X}, <file>, *, NN.
PATH_PLACEHOLDER = re.compile(r"[{}$<>*]|\bNN(?=\b|_)")


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


def make_targets() -> set[str]:
    makefile = ROOT / "Makefile"
    return set(re.findall(r"^([\w-]+):", makefile.read_text(), re.M)) if makefile.exists() else set()


def lesson_has_checks(arg: str) -> bool:
    """`./workshop.sh check ARG` runs something: ARG names a lesson (3, 03, uwsgi) that has checks."""
    from workshop.lessons import lesson_name
    try:
        name = lesson_name(arg)
    except KeyError:
        return False
    return bool(list((ROOT / "checks").glob(f"test_{name[:2]}_*.py")))


def path_exists(path: str) -> bool:
    """A repository path exists; a segment with a placeholder in it matches any name."""
    pattern = "/".join("*" if PATH_PLACEHOLDER.search(seg) else seg for seg in path.split("/"))
    return any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / pattern).exists()


def module_exists(module: str) -> bool:
    """`python -m module` finds it: the workshop's own (bench.report) as a file here, others installed."""
    top = module.split(".")[0]
    if (ROOT / top).is_dir():
        local = ROOT / Path(*module.split("."))
        return local.with_suffix(".py").exists() or (local / "__init__.py").exists()
    return importlib.util.find_spec(top) is not None


def stale_things(text: str) -> list[tuple[int, str]]:
    """(offset, what is wrong) for each command or path in text that does not exist."""
    commands, stale = workshop_commands(), []
    for m in WORKSHOP.finditer(text):
        sub, arg = m.groups()
        if sub and sub not in commands:
            stale.append((m.start(), f"./workshop.sh {sub} (workshop.sh has: {', '.join(sorted(commands))})"))
        elif sub == "check" and arg and not arg.isupper() and not lesson_has_checks(arg):
            stale.append((m.start(), f"./workshop.sh check {arg} (no lesson {arg!r} with checks/test_NN_*.py)"))
    for m in REPO_PATH.finditer(text):
        path = m.group(1).rstrip(".,:;")
        if re.match(r"[\"']\$", text[m.end():m.end() + 2]):
            path += "*"  # checks/test_"$x"_*.py: shell quotes around a variable part
        if not path_exists(path):
            stale.append((m.start(), f"{path} does not exist"))
    targets = make_targets()
    for m in MAKE.finditer(text):
        if m.group(1) not in targets:
            stale.append((m.start(), f"make {m.group(1)} (" + ("the Makefile has no such target)" if targets
                                                             else "there is no Makefile)")))
    if (ROOT / ".venv/bin").is_dir():
        for m in VENV_TOOL.finditer(text):
            if not (ROOT / ".venv/bin" / m.group(1)).exists():
                stale.append((m.start(), f".venv/bin/{m.group(1)} is not in the virtualenv"))
    for m in PY_MODULE.finditer(text):
        module = m.group(1).rstrip(".")
        if not module_exists(module):
            stale.append((m.start(), f"python -m {module}: no such module"))
    return stale


def test_docs_name_only_things_that_exist():
    sources = sorted(DOCS.rglob("*.md")) + sorted(ROOT.glob("lessons/*/README.md")) + [ROOT / "README.md"]
    stale = []
    for source in sources:
        where = source.relative_to(ROOT)
        for chunk in instructions(source.read_text()):
            stale += [f"{where}: {problem}" for _, problem in stale_things(chunk)]
    assert not stale, "the docs tell learners to use things that do not exist:\n" + "\n".join(sorted(set(stale)))


def test_the_stale_check_catches_stale_things():
    """The check above is only worth something if it fails on a stale line."""
    page = "Run `./workshop.sh {sub}` then\n```bash\nlessons/{lesson}/run.sh\n./workshop.sh check {n}\n```\n"
    sub, lesson, n = "frobnicate", "42_magic", "42"
    found = [p for c in instructions(page.format(sub=sub, lesson=lesson, n=n)) for _, p in stale_things(c)]
    assert any(p.startswith(f"./workshop.sh {sub} ") for p in found), found
    assert f"lessons/{lesson}/run.sh does not exist" in found, found
    assert any(p.startswith(f"./workshop.sh check {n} ") for p in found), found
    assert not stale_things("./workshop.sh check 03 and lessons/03_uwsgi/run.sh, lessons/NN_x, checks/test_{n}_*.py")


# --------------------------------------- no stale commands in messages either

MESSAGE_FOLDERS = ["lessons", "workshop", "scripts", "checks", "bench", "tools"]


def _python_messages(text: str):
    """(line, source text) of what a Python file tells people: every string passed to a call
    (print, an exception, pytest.fail...), raised or asserted, and every f-string."""
    tree = ast.parse(text)
    keep = []
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, ast.Call):
            parts += node.args + [k.value for k in node.keywords]
        elif isinstance(node, ast.Raise) and node.exc is not None:
            parts.append(node.exc)
        elif isinstance(node, ast.Assert) and node.msg is not None:
            parts.append(node.msg)
        elif isinstance(node, ast.JoinedStr):
            parts.append(node)
        for part in parts:
            keep += [n for n in ast.walk(part) if isinstance(n, ast.JoinedStr)
                     or (isinstance(n, ast.Constant) and isinstance(n.value, str))]
    lines, seen = text.encode().split(b"\n"), set()
    for node in keep:
        if (node.lineno, node.col_offset) not in seen:
            seen.add((node.lineno, node.col_offset))
            yield node.lineno, source_of(lines, node)


def source_of(lines: list[bytes], node: ast.expr) -> str:
    """ast.get_source_segment(text, node), from the file's lines split once: that function
    splits the whole file again at every call. Offsets are in UTF-8 bytes, as ast gives them."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first][node.col_offset:node.end_col_offset].decode()
    return b"\n".join([lines[first][node.col_offset:], *lines[first + 1:last],
                        lines[last][:node.end_col_offset]]).decode()


def messages(path: Path):
    """(line, text) of what a script, the harness or a lesson says to whoever runs or reads it.

    Python: the strings it passes, raises and asserts, and its f-strings (not
    its docstrings and comments, whose prose reads like commands: "./workshop.sh
    uses it"). Shell and .ini files: every line, comments included
    (workshop.sh prints its comments as its help; an .ini's comments are what
    a learner reads of it).
    """
    text = path.read_text()
    if path.suffix == ".py":
        yield from _python_messages(text)
    else:
        yield from enumerate(text.splitlines(), 1)


def stale_messages(files) -> list[str]:
    stale = []
    for path in files:
        for line, text in messages(path):
            for offset, problem in stale_things(text):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                stale.append(f"{where}:{line + text.count(chr(10), 0, offset)}: {problem}")
    return stale


def message_files() -> list[Path]:
    files = [ROOT / "workshop.sh"]
    for folder in MESSAGE_FOLDERS:
        files += sorted(p for ext in ("sh", "py", "ini") for p in (ROOT / folder).rglob(f"*.{ext}")
                        if "__pycache__" not in p.parts)
    return files


def test_messages_name_only_things_that_exist():
    """What the scripts, the harness and the lessons print names commands and files that exist."""
    stale = stale_messages(message_files())
    assert not stale, ("these messages tell people to use things that do not exist "
                       "(fix the message, or the thing it names):\n" + "\n".join(stale))


def test_the_message_check_catches_stale_messages(tmp_path):
    old = {"cmd": "make setup", "sub": "frobnicate", "file": "checks/test_07_magic.py",
           "mod": "workshop.frob", "data": "checks/data.txt"}
    script = tmp_path / "start.sh"
    script.write_text("#!/bin/sh\n# ./workshop.sh check 03 runs the checks\n"
                      "echo \"No python: run '{cmd}' first\" >&2\n".format(**old))
    module = tmp_path / "tool.py"
    module.write_text('"""The tool: see {data}."""\n\nimport sys\n\nname = "x"\n'
                      'config = "{data}"  # {data}\n'
                      'print(f"{{name}}: run ./workshop.sh {sub}, then pytest {file}")\n'
                      'raise SystemExit("or: python -m {mod}")\n'.format(**old))
    found = stale_messages([script, module])
    assert any(f.startswith(f"{script}:3: {old['cmd']} ") for f in found), found
    assert any(f.startswith(f"{module}:7: ./workshop.sh {old['sub']} ") for f in found), found
    assert f"{module}:7: {old['file']} does not exist" in found, found
    assert any(f.startswith(f"{module}:8: python -m {old['mod']}") for f in found), found
    # The shell comment's check 03 is real; the data file is named in code, a docstring and a comment.
    assert len(found) == 4, found


# ------------------------------------- no words about how the workshop was built

LEARNER_FACING = ["docs/**/*.md", "lessons/**/*", "README.md", "bench/README.md",
                  "bench/results/results.md", "tools/**/README.md"]
DEVELOPMENT = re.compile(
    r"\bissues?\s*#?\d+|\b(?:PR|pull request)\s*#?\d+|\bsessions?\s*#?\d+"
    r"|\b(?:this|that|the last|an earlier|a later|earlier|previous|next|later|another)"
    r"\s+(?:work(?:ing)?\s+|coding\s+|dev\s+)?session\b", re.I)


def development_wording(files) -> list[str]:
    found = []
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for m in DEVELOPMENT.finditer(text):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{where}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}")
    return found


def test_learners_read_nothing_about_how_the_workshop_was_built():
    files = sorted({p for pattern in LEARNER_FACING for p in ROOT.glob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts})
    found = development_wording(files)
    assert not found, ("words about the workshop's development (issues, work sessions) where learners "
                       "read them: say what the thing is or does instead:\n" + "\n".join(found))


def test_the_development_check_catches_such_words(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("## Targets (issue 7)\n\nAs decided in an earlier session, see PR #12.\n"
                    "Each exec session keeps a conmon; uWSGI runs in its own session.\n")
    found = development_wording([page])
    assert [f.split(": ", 1)[1] for f in found] == ["'issue 7'", "'an earlier session'", "'PR #12'"], found


# ------------------------------------------ numbers come from results.json

# A figure that looks measured: images or requests per second, milliseconds,
# bytes, or a ratio ("114×"; "4 × 2" is a layout, "256×256" a size).
FIGURE = re.compile(r"(?<![\w.,])(?P<num>\d[\d,]*(?:\.\d+)?)(?:[ \t]?(?P<unit>images/s|img/s|requests/s|req/s"
                    r"|/s\b|ms\b|[kKMG]i?B\b)|(?P<ratio>[×x])(?![\w×]))")
# Figures that are settings or facts, not measurements: (figure, what its
# paragraph must mention, why it may be written by hand).
NOT_MEASURED = [
    ("10 MB", r"client_max_body_size|SEG_MAX_BYTES|upload", "the workshop's upload limit, nginx's and the app's"),
    ("1 MB", r"client_max_body_size|nginx's", "nginx's default client_max_body_size"),
    ("4 KB", r"buffer", "uWSGI's default buffer-size"),
    ("8 KB", r"buffer|headers", "nginx's header buffers (large_client_header_buffers)"),
    ("16 KB", r"buffer|headers|TLS record", "nginx's header buffers in all; the size of one TLS record"),
    ("12 KB", r"headers", "the headers lesson 04's hostile check sends"),
    ("64 KB", r"buffer-size|packet", "the largest uwsgi packet, workers.ini's buffer-size"),
    ("6 KB", r"headers|cookies", "the header size lesson 03's check sends"),
    ("6 GB", r"disk", "the free disk the virtualenv needs"),
    ("13 MB", r"weights", "the size of torchvision's pretrained weights file"),
    ("16 KB", r"\.dockerignore|Dockerfiles copy", "what .dockerignore lets into the build context"),
    ("5.99 GB", r"image", "a container image's size (lesson 06, the podman stand-in)"),
    ("1.2 GB", r"image|build", "a container image's size (lesson 06, the podman stand-in)"),
    ("98 MB", r"nginx image", "a container image's size (lesson 06, the podman stand-in)"),
    ("100 ms", r"netem|delay", "the latency lesson 08 adds to one link with tc netem"),
    ("20 ms", r"netem|jitter", "the jitter lesson 08 adds to that latency"),
]


def figures_by_hand(text: str) -> list[tuple[int, str]]:
    """(line, figure) for each benchmark-looking figure in a page that no placeholder fills in."""
    text = hooks.PLACEHOLDER.sub("", text)
    found, offset = [], 0
    for block in re.split(r"(\n[ \t]*\n)", text):
        lines = [l for l in block.splitlines() if "--8<--" not in l]
        for m in FIGURE.finditer("\n".join(lines)):
            figure = m.group(0).strip() if m["ratio"] else f"{m['num']} {m['unit']}".replace(" /s", "/s")
            allowed = any(figure == f and re.search(ctx, block) for f, ctx, _ in NOT_MEASURED)
            if not allowed:
                found.append((text.count("\n", 0, offset + block.find(m.group(0))) + 1, figure))
        offset += len(block)
    return found


def test_pages_quote_no_measured_figure_by_hand():
    """Guide pages quote measured figures through {{ bench.... }} placeholders
    (scripts/docs/hooks.py fills them in from bench/results/results.json);
    READMEs, read without the build, point to the guide or results.md instead."""
    pages = sorted(DOCS.rglob("*.md")) + sorted(ROOT.glob("lessons/*/README.md")) + [ROOT / "README.md"]
    found = [f"{page.relative_to(ROOT)}:{line}: {figure}"
             for page in pages for line, figure in figures_by_hand(page.read_text())]
    # A README is read as it is (on GitHub, or included into a page after the figures are filled in).
    found += [f"{page.relative_to(ROOT)}: {m.group(0)} (no docs build fills it in here)"
              for page in pages if DOCS not in page.parents for m in hooks.PLACEHOLDER.finditer(page.read_text())]
    assert not found, ("figures that look measured but are copied by hand: quote them from results.json "
                       "with {{ bench.path.to.value }} (guide pages) or point to the guide (READMEs); a "
                       "setting that is not a measurement goes into NOT_MEASURED with its reason:\n"
                       + "\n".join(found))


def test_the_figure_check_catches_a_copied_figure():
    page = ("Two workers made 13.2 images/s and\n{{ bench.stages.limit.images_per_s }} images/s alone;\n"
            "the PNG is 114× smaller, 4 × 2 is a layout and 256×256 a size.\n\n"
            "`client_max_body_size 10m`: uploads up to 10 MB.\n\nThe workers hold 10 MB each.\n")
    assert figures_by_hand(page) == [(1, "13.2 images/s"), (3, "114×"), (7, "10 MB")]


def test_a_figure_results_json_lacks_fails_the_build_naming_page_and_key():
    from mkdocs.exceptions import PluginError

    results = hooks.bench_results()
    assert hooks.resolve("bench.stages.lesson03_sweep[workers=2, torch_threads=1, mode=prefork].rps",
                         results, "p.md") == f"{next(r['rps'] for r in results['stages']['lesson03_sweep'] if (r['workers'], r['torch_threads'], r['mode']) == (2, 1, 'prefork')):.1f}"
    assert hooks.resolve("bench.stages.mask_formats.json_bytes | kB | .0f", results, "p.md") == \
        f"{results['stages']['mask_formats']['json_bytes'] / 1000:.0f}"
    with pytest.raises(PluginError, match=r"^page\.md: .*no 'lesson07' in bench\.stages"):
        hooks.fill_in_figures("made {{ bench.stages.lesson07.rps }} images/s", "page.md")


def test_results_md_is_what_report_py_makes_of_results_json():
    """The Benchmarks page shows results.md: it must be rendered from the committed results.json."""
    from bench import report

    results = json.loads((ROOT / "bench/results/results.json").read_text())
    assert (ROOT / "bench/results/results.md").read_text() == report.markdown(results), \
        "bench/results/results.md is out of date: python -m bench.report bench/results"


# ---------------------------------------- one duration for the full benchmark

DURATION = re.compile(r"(?:about|~)\s*(?P<n>[\d.]+)\s*(?:min\b|minutes?)")
SAYS_HOW_LONG = ["README.md", "workshop.sh", "bench/README.md", "bench/run.py", "docs/**/*.md"]


def bench_durations(name: str, text: str) -> list[tuple[str, str, str]]:
    """(where, "full" or "quick", minutes) for each "about N minutes" said of the benchmark.

    A duration is the smoke run's when "quick" comes after the line's previous
    duration (or `;`) and before it; `[--quick]`, the usage syntax, does not count.
    """
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if not re.search(r"\bbench\b", line):
            continue
        start = 0
        for m in DURATION.finditer(line):
            before = line[start:m.start()].rsplit(";", 1)[-1].replace("[--quick]", "")
            found.append((f"{name}:{n}", "quick" if "quick" in before else "full", m["n"]))
            start = m.end()
    return found


def test_one_duration_for_the_full_benchmark():
    """Every place that says how long `./workshop.sh bench` takes says it the same way: the full
    run what the committed run took (results.json's meta.duration_s), the smoke run what the
    guide's Benchmarks page says."""
    seconds = json.loads((ROOT / "bench/results/results.json").read_text())["meta"]["duration_s"]
    full = f"{seconds / 60:.0f}"
    said = []
    for pattern in SAYS_HOW_LONG:
        for path in sorted(ROOT.glob(pattern)):
            name = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            if name.startswith("docs/"):
                text = hooks.fill_in_figures(text, name)
            said += bench_durations(name, text)
    quick = {minutes for where, kind, minutes in said if kind == "quick" and where.startswith("docs/")}
    assert len(quick) == 1, f"the guide should say once how long --quick takes, it says: {quick or 'nothing'}"
    wrong = [f"{where}: about {minutes} minutes" for where, kind, minutes in said
             if minutes != (full if kind == "full" else next(iter(quick)))]
    assert not wrong, (f"the committed full benchmark took {seconds:.0f} s, about {full} minutes (the guide "
                       "quotes bench/results/results.json's meta.duration_s), and the guide gives --quick "
                       f"about {next(iter(quick))} minutes; these say otherwise:\n" + "\n".join(wrong))


def test_the_duration_check_tells_full_from_quick():
    line = "./workshop.sh bench [--quick]  what each stage costs (~8 min; --quick ~1.5 min)"
    assert bench_durations("x", line) == [("x:1", "full", "8"), ("x:1", "quick", "1.5")]
    assert bench_durations("x", "python -m bench --quick    # smoke run, about 1.5 minutes") == \
        [("x:1", "quick", "1.5")]
