"""Lesson 04: uWSGI's only door is the unix socket, and only nginx's group may open it.

The uwsgi protocol has no login: whoever can open the socket can make uWSGI
run code (lesson 05 shows it). Here nothing listens on TCP, and the file's
mode keeps everyone else out: a user outside the socket's group cannot even
connect (workshop/door.py, run as that user, knocks the way a stranger would).
"""

import grp
import os
import shutil
import subprocess

import pytest

from workshop.harness import lesson_server
from workshop.lessons import ROOT

from checks.utils import segment, uwsgi_tcp_ports

LESSON = "04_nginx"
NOBODY = 65534   # uid and gid of nobody/nogroup on Debian
# The system's python3: the virtualenv's may sit where another user cannot read
# (e.g. under /root). workshop/door.py needs the standard library only.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.fixture(scope="module")
def stack(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


def test_uwsgi_listens_on_no_tcp_port(stack):
    ports = uwsgi_tcp_ports(stack)
    assert not ports, f"lesson 04's uWSGI listens on TCP ports {sorted(ports)}: anyone who reaches " \
        "them can run code as the app's user. Use the unix socket only."
    assert segment(stack).status_code == 200


def as_user(code: str, *args: str, groups: list[int]) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEM_PYTHON, "-c", code, *args], user=NOBODY, group=NOBODY,
                          extra_groups=groups, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
@pytest.mark.skipif(not SYSTEM_PYTHON, reason="no system python3 for another user")
def test_a_user_outside_nginxs_group_cannot_open_the_socket(stack):
    sock = str(stack.run_dir / "inference.sock")
    stranger = as_user("import sys; from workshop import door; sys.exit(door.main(sys.argv[1:]))", sock, groups=[])
    assert stranger.returncode == 0 and "PermissionError" in stranger.stdout, \
        f"user nobody knocked on {sock}:\n{stranger.stdout}{stranger.stderr}"
    # The same user in the socket's group reaches the app: the group is the key
    # (here only a harmless GET /readyz, no magic variables).
    member = as_user("import sys; from workshop import door; print(door.send(sys.argv[1], door.packet(door.REQUEST)))",
                     sock, groups=[os.stat(sock).st_gid])
    assert "HTTP/1.1 200" in member.stdout, \
        f"a member of group {grp.getgrgid(os.stat(sock).st_gid).gr_name} should reach the app:\n" \
        f"{member.stdout}{member.stderr}"
    assert segment(stack).status_code == 200
