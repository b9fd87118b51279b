"""mkdocs hooks for the guide (listed under `hooks:` in mkdocs.yml).

1. Mermaid offline: before a build (or `mkdocs serve`) make sure
   docs/assets/vendor/mermaid.min.js is there, by running fetch-mermaid.sh.
   mkdocs.yml loads it through extra_javascript, so mkdocs-material finds a
   global `mermaid` and never asks a CDN for it.

2. Quotes by content, not by line number. A page may write

       --8<-- "lessons/02_segmentation/segmentation.py" from "def predict" to "return mask"

   on a line of its own. This hook turns it into the snippets line range
   "path:A:B", where A is the first line containing the `from` text and B the
   first line at or after A containing the `to` text. When the lesson file
   changes, the quote follows; when the text is gone, the strict build fails
   and says which quote to fix.

3. Exercise markers. The lesson files mark the parts a learner writes in
   exercise mode (`# EXERCISE 02.1: ...` ... `# END EXERCISE`, see
   workshop/exercises.py). Every file the guide includes is read without
   those lines, so the guide shows the clean solutions, and quotes by
   content count lines the same way. A line `<!-- exercises: 03_uwsgi -->`
   on a page becomes the list of that lesson's exercises, from the markers.

4. Files that are not written yet. Includes of the paths listed in PENDING
   are replaced by a visible note while the file does not exist; as soon as
   it exists, the include is real (and `check_paths` guards it again). Every
   other missing include still fails `mkdocs build --strict`.
"""

from __future__ import annotations

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
from workshop import exercises  # noqa: E402  (the marker syntax has one home)
MERMAID = ROOT / "docs/assets/vendor/mermaid.min.js"

# Included by the guide, written by someone else, not in the repository yet:
# path -> what the page says instead while the file is missing. Remove a line
# once its file has landed (it is harmless then, but guards nothing).
PENDING: dict[str, str] = {}   # every included file exists now

# Files from outside docs/ that the site shows when they exist:
# URL inside the site -> file in the repository. A page's image line pointing
# at a missing one is dropped instead of failing the strict build.
PUBLISH = {
    "assets/bench/chart.png": "bench/results/chart.png",
}

# `./workshop.sh ...` commands the guide may show before they work: a
# subcommand workshop.sh does not have yet, or `check NN` before
# checks/test_NN_*.py exists (checks/test_guide.py reads this).
PENDING_COMMANDS: set[str] = set()

SNIPPET = re.compile(r'^(?P<indent>[ \t]*)(?P<marker>-{1,}8<-{1,}[ \t]+)(?P<q>["\'])(?P<path>[^"\']+)(?P=q)'
                     r'(?:[ \t]+from[ \t]+"(?P<start>[^"]+)"[ \t]+to[ \t]+"(?P<end>[^"]+)")?[ \t]*$')


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
    if not exercises.ANY_MARKER.search(text):
        return lines
    return exercises.strip_markers(text + "\n").split("\n")[:-1]


def _line_range(path: str, start: str, end: str, page: str) -> str:
    lines = strip_markers((ROOT / path).read_text().splitlines())  # as snippets will read it
    first = next((i for i, line in enumerate(lines, 1) if start in line), None)
    if first is None:
        raise PluginError(f"{page}: quotes {path} from {start!r}, which is no longer in that file")
    last = next((i for i, line in enumerate(lines[first - 1:], first) if end in line), None)
    if last is None:
        raise PluginError(f"{page}: quotes {path} from {start!r} to {end!r}; "
                          f"{end!r} is no longer after it")
    return f"{path}:{first}:{last}"


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
    found = exercises.exercises(exercises.REFERENCE, lesson)
    if not found:
        raise PluginError(f"{page}: lists the exercises of {lesson!r}, which has none (or no such lesson)")
    out = []
    for ex in found:
        file = ex.path.split("/", 1)[1]
        out += [f"- **{ex.id}** in `{file}`: {ex.title}.", f"  *Hint:* {ex.hint}"]
    return out


def on_page_markdown(markdown, page, **kwargs):
    out = []
    in_code = False
    for line in markdown.splitlines():
        if (ex := EXERCISES.match(line)) and not in_code:
            out += _exercise_list(ex["lesson"], page.file.src_uri)
            continue
        if FENCE.match(line):
            in_code = not in_code
        m = SNIPPET.match(line)
        if m:
            path = m["path"].split(":", 1)[0]
            if path in PENDING and not (ROOT / path).exists():
                log.info("%s: %s does not exist yet, shown as a note", page.file.src_uri, path)
                indent, note = m["indent"], PENDING[path]
                if in_code:
                    out.append(f"{indent}({path}: {note})")
                else:
                    out += [f'{indent}!!! note "Not there yet"', "",
                            f"{indent}    `{path}`: {note}.", ""]
                continue
            if m["start"]:
                target = _line_range(m["path"], m["start"], m["end"], page.file.src_uri)
                line = f'{m["indent"]}{m["marker"]}"{target}"'
        img = IMAGE.match(line)
        if img and not in_code:
            url = img["url"].lstrip("./")
            source = PUBLISH.get(url)
            if source and not (ROOT / source).is_file():
                log.info("%s: %s does not exist yet, image left out", page.file.src_uri, source)
                continue
        out.append(line)
    return "\n".join(out) + "\n"
