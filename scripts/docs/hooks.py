"""mkdocs hooks for the guide (listed under `hooks:` in mkdocs.yml).

1. Mermaid offline: before a build (or `mkdocs serve`) make sure
   docs/assets/vendor/mermaid.min.js is there, by running fetch-mermaid.sh.
   mkdocs.yml loads it through extra_javascript, so mkdocs-material finds a
   global `mermaid` and never asks a CDN for it.

2. Quotes by content, not by line number. A page may write, on a line of its own,

       --8<-- "lessons/02_segmentation/segmentation.py" from "def predict" to "return mask"

   which becomes the snippets line range "path:A:B", where A is the first
   line containing the `from` text and B the first line at or after A
   containing the `to` text; or

       --8<-- "lessons/03_uwsgi/README.md" section "Run it"

   which quotes the body of a Markdown file's section: the lines under the
   heading `Run it` (any level), up to the next heading. That is how a
   guide page shows a part of a lesson's README without a copy. When the
   file changes, the quote follows; when the text is gone, the strict build
   fails and says which quote to fix.

3. Exercise markers. The lesson files mark the parts a learner writes in
   exercise mode (workshop/markers.py). Every file the guide includes is
   read without those lines, so the guide shows the clean solutions, and
   quotes by content count lines the same way. A line
   `<!-- exercises: 03_uwsgi -->` on a page becomes the list of that
   lesson's exercises, from the markers.

4. Numbers from the benchmark. A page never copies a measured figure; it
   names it in bench/results/results.json:

       2 workers made {{ bench.stages.lesson03_sweep[workers=2,torch_threads=1,mode=prefork].rps }} images/s

   `bench.` is the top of results.json; `.key` goes into an object, `[N]`
   takes item N of a list, `[field=value,...]` the one item of a list whose
   fields have those values. After the path, `| filter` steps convert or
   format the number: `kB` and `MB` divide bytes by 1000 and 1000², `min`
   divides seconds by 60, and a Python format spec (`.0f`, `.2f`, `,`)
   formats it. Without a format spec a number gets 3 significant figures
   or so (948, 13.2, 8.8, 0.94; integers whole). A path that results.json
   does not have fails the strict build, naming the page and the key.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.hooks.guide")
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from workshop import exercises, markers  # noqa: E402  (the marker syntax has one home)
MERMAID = ROOT / "docs/assets/vendor/mermaid.min.js"
RESULTS = ROOT / "bench/results/results.json"

# Files from outside docs/ that the site shows when they exist:
# URL inside the site -> file in the repository. A page's image line pointing
# at a missing one is dropped instead of failing the strict build.
PUBLISH = {
    "assets/bench/chart.png": "bench/results/chart.png",
}

SNIPPET = re.compile(r'^(?P<indent>[ \t]*)(?P<marker>-{1,}8<-{1,}[ \t]+)(?P<q>["\'])(?P<path>[^"\']+)(?P=q)'
                     r'(?:[ \t]+from[ \t]+"(?P<start>[^"]+)"[ \t]+to[ \t]+"(?P<end>[^"]+)"'
                     r'|[ \t]+section[ \t]+"(?P<section>[^"]+)")?[ \t]*$')


def on_config(config, **kwargs):
    script = ROOT / "scripts/docs/fetch-mermaid.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if result.returncode != 0 or not MERMAID.is_file():
        raise PluginError(f"the guide's diagrams need {MERMAID.relative_to(ROOT)}, and "
                          f"{script.relative_to(ROOT)} could not fetch it:\n{result.stderr.strip()}")
    # Snippet paths are relative to the repository root, wherever mkdocs was started from.
    config.mdx_configs["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    _strip_markers_from_snippets()
    return config


def _strip_markers_from_snippets():
    """Make pymdownx.snippets read every included file without exercise markers."""
    from pymdownx.snippets import SnippetPreprocessor

    if getattr(SnippetPreprocessor.read_lines, "strips_exercise_markers", False):
        return  # `mkdocs serve` loads the hooks again on every rebuild
    original = SnippetPreprocessor.read_lines

    def read_lines(self, path):
        return strip_markers(original(self, path))

    read_lines.strips_exercise_markers = True
    SnippetPreprocessor.read_lines = read_lines


def strip_markers(lines: list[str]) -> list[str]:
    """A file's lines as the guide shows them: no exercise marker lines."""
    text = "\n".join(lines)
    if not markers.ANY_MARKER.search(text):
        return lines
    return markers.strip_markers(text + "\n").split("\n")[:-1]


def _lines(path: str) -> list[str]:
    return strip_markers((ROOT / path).read_text().splitlines())  # as snippets will read it


def _line_range(path: str, start: str, end: str, page: str) -> str:
    lines = _lines(path)
    first = next((i for i, line in enumerate(lines, 1) if start in line), None)
    if first is None:
        raise PluginError(f"{page}: quotes {path} from {start!r}, which is no longer in that file")
    last = next((i for i, line in enumerate(lines[first - 1:], first) if end in line), None)
    if last is None:
        raise PluginError(f"{page}: quotes {path} from {start!r} to {end!r}; "
                          f"{end!r} is no longer after it")
    return f"{path}:{first}:{last}"


def _exercise_of_each_line(path: str) -> list[str | None]:
    """For each line of a file as the guide shows it: the exercise it belongs to, or None."""
    owners, inside = [], None
    for line in (ROOT / path).read_text().splitlines():
        if m := markers.MARK.match(line):
            inside = m["id"]
        elif markers.END.match(line):
            inside = None
        elif not (inside and markers.STUB.match(line)):
            owners.append(inside)
    return owners


def spoiled_exercises(target: str) -> set[str]:
    """The exercises whose solution an include ("path" or "path:first:last") shows."""
    path, _, span = target.partition(":")
    if not (ROOT / path).is_file():
        return set()
    owners = _exercise_of_each_line(path)
    if span:
        first, last = (int(n) for n in span.split(":"))
        owners = owners[first - 1:last]
    return {ex for ex in owners if ex}


def _folded(block: list[str], exercises_shown: set[str]) -> list[str]:
    """A fenced code block that shows a solution, inside a collapsed admonition."""
    indent = re.match(r"[ \t]*", block[0]).group()
    which = ", ".join(sorted(exercises_shown))
    title = f"The solution (opening it spoils exercise{'s' if len(exercises_shown) > 1 else ''} {which})"
    return [f'{indent}??? success "{title}"', ""] + \
        [indent + "    " + line[len(indent):] if line.strip() else line for line in block]


HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$")


def _section_range(path: str, title: str, page: str) -> str:
    """The body of a Markdown section (no heading, no blank lines around it) as "path:A:B"."""
    lines = _lines(path)
    in_code, start, end = False, None, None
    for i, line in enumerate(lines, 1):
        if FENCE.match(line):
            in_code = not in_code
        heading = None if in_code else HEADING.match(line)
        if heading and start is not None:
            end = i - 1
            break
        if heading and heading["title"] == title:
            start = i + 1
    if start is None:
        titles = [h["title"] for h in map(HEADING.match, lines) if h]
        raise PluginError(f"{page}: quotes the section {title!r} of {path}, which has none "
                          f"(its headings: {', '.join(titles)})")
    end = len(lines) if end is None else end
    while start <= end and not lines[start - 1].strip():
        start += 1
    while end >= start and not lines[end - 1].strip():
        end -= 1
    if start > end:
        raise PluginError(f"{page}: the section {title!r} of {path} is empty")
    return f"{path}:{start}:{end}"


# ------------------------------------------------------ benchmark figures

PLACEHOLDER = re.compile(r"\{\{[ \t]*(?P<expr>bench\b[^}]*?)[ \t]*\}\}")
STEP = re.compile(r"\.(?P<key>[\w-]+)|\[(?P<index>\d+)\]|\[(?P<select>[^\]=]+=[^\]]*)\]")
UNITS = {"kB": 1e3, "MB": 1e6, "min": 60}


def bench_results() -> dict:
    return json.loads(RESULTS.read_text())


def _walk(results, path: str, where: str):
    """The value at a placeholder's path (after `bench`) in results.json."""
    value, done, pos = results, "bench", 0
    while pos < len(path):
        step = STEP.match(path, pos)
        if not step:
            raise PluginError(f"{where}: cannot read {path[pos:]!r} (expected .key, [N] or [field=value])")
        pos = step.end()
        if step["key"] is not None:
            if not isinstance(value, dict) or step["key"] not in value:
                has = ", ".join(value) if isinstance(value, dict) else f"a {type(value).__name__}, not an object"
                raise PluginError(f"{where}: results.json has no {step['key']!r} in {done} (it has: {has})")
            value = value[step["key"]]
        elif step["index"] is not None:
            n = int(step["index"])
            if not isinstance(value, list) or n >= len(value):
                raise PluginError(f"{where}: results.json has no item {n} in {done}")
            value = value[n]
        else:
            want = dict((k.strip(), v.strip()) for k, v in
                        (part.split("=", 1) for part in step["select"].split(",")))
            if not isinstance(value, list):
                raise PluginError(f"{where}: {done} in results.json is not a list to select from")
            found = [item for item in value if isinstance(item, dict)
                     and all(str(item.get(k)) == v for k, v in want.items())]
            if len(found) != 1:
                raise PluginError(f"{where}: {len(found)} items of {done} in results.json have "
                                  f"{step['select']} (a placeholder must select exactly one)")
            value = found[0]
        done += step.group(0)
    return value


def _format(value, steps: list[str], where: str) -> str:
    spec = None
    for step in steps:
        if step in UNITS:
            value = value / UNITS[step]
        else:
            spec = step
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if spec or steps:
            raise PluginError(f"{where}: {value!r} is not a number to format")
        return str(value)
    if spec is None:
        if isinstance(value, int):
            return str(value)
        spec = ".0f" if abs(value) >= 100 else ".1f" if abs(value) >= 1 else ".2f"
    try:
        return format(value, spec)
    except ValueError:
        raise PluginError(f"{where}: {spec!r} is neither a unit ({', '.join(UNITS)}) "
                          "nor a format spec") from None


def resolve(expr: str, results: dict, page: str) -> str:
    """One placeholder's text, e.g. resolve("bench.meta.cores", results, "index.md") == "2"."""
    path, *steps = [part.strip() for part in expr.split("|")]
    where = f"{page}: {{{{ {expr} }}}}"
    return _format(_walk(results, path[len("bench"):], where), steps, where)


def fill_in_figures(markdown: str, page: str) -> str:
    if not PLACEHOLDER.search(markdown):
        return markdown
    if not RESULTS.is_file():
        raise PluginError(f"{page}: quotes benchmark figures, and {RESULTS.relative_to(ROOT)} does not exist")
    results = bench_results()
    return PLACEHOLDER.sub(lambda m: resolve(m["expr"], results, page), markdown)


# ------------------------------------------------------------------ pages

IMAGE = re.compile(r"^[ \t]*!\[[^\]]*\]\((?P<url>[^)\s]+)[^)]*\)[ \t]*$")
FENCE = re.compile(r"^[ \t]*(```|~~~)")


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for url, source in PUBLISH.items():
        if (ROOT / source).is_file():
            files.append(File.generated(config, url, abs_src_path=str(ROOT / source)))
    return files


EXERCISES = re.compile(r"^[ \t]*<!--[ \t]*exercises:[ \t]*(?P<lesson>[\w-]+)[ \t]*-->[ \t]*$")


def _exercise_list(lesson: str, page: str) -> list[str]:
    """What a lesson page says about its exercises: how they work, then each one with its first hint."""
    found = exercises.exercises(lesson=lesson)
    if not found:
        raise PluginError(f"{page}: lists the exercises of {lesson!r}, which has none (or no such lesson)")
    home = "../" * page.count("/") + "index.md#exercise-mode"
    out = [f"In [exercise mode]({home}) you write these parts yourself, in `workspace/{lesson}/`. "
           "The code on this page that holds their solutions is folded away: opening it spoils "
           "the exercise. `./workshop.sh hint` gives one hint at a time, from a nudge to the answer.", ""]
    for ex in found:
        file = ex.path.split("/", 1)[1]
        out += [f"- **{ex.id}** in `{file}`: {ex.title}.", f"  *First hint:* {ex.hint}"]
    return out


def on_page_markdown(markdown, page, **kwargs):
    src = page.file.src_uri
    out = []
    block: list[str] | None = None    # the fenced code block being read
    shown: set[str] = set()            # the exercises whose solution it includes
    for line in fill_in_figures(markdown, src).splitlines():
        if (ex := EXERCISES.match(line)) and block is None:
            out += _exercise_list(ex["lesson"], src)
            continue
        m = SNIPPET.match(line)
        if m:
            target = m["path"]
            if m["start"] or m["section"]:
                target = (_line_range(m["path"], m["start"], m["end"], src) if m["start"]
                          else _section_range(m["path"], m["section"], src))
                line = f'{m["indent"]}{m["marker"]}"{target}"'
            if block is not None:
                shown |= spoiled_exercises(target)
        img = IMAGE.match(line)
        if img and block is None:
            url = img["url"].lstrip("./")
            source = PUBLISH.get(url)
            if source and not (ROOT / source).is_file():
                log.info("%s: %s does not exist yet, image left out", src, source)
                continue
        if FENCE.match(line):
            if block is None:
                block, shown = [line], set()
                continue
            block.append(line)
            # Solutions are folded away: a learner opens one on purpose, not by scrolling.
            out += _folded(block, shown) if shown else block
            block = None
            continue
        (out if block is None else block).append(line)
    return "\n".join(out + (block or [])) + "\n"
