"""Shared machinery for the workshop's lessons, checks and benchmarks.

lessons      where the lessons live (reference or a learner's workspace), their names
procs        start/stop servers as process groups, wait for them, free ports
harness      run a lesson's own run.sh on free ports for a check; bounded load runs
nginx        render nginx configs from one template, run nginx without root
certs        a private CA and the certificates nginx and uWSGI show each other (lesson 05)
door         knock on a uwsgi socket as a stranger would; the TCP ports a process listens on
images       sample photos and deliberately broken uploads
markers      the exercise markers' syntax (read by the guide, nginx and the workspace tool)
exercises    exercise mode: the workspace, hints, reset, progress (./workshop.sh workspace|hint|reset)
plugin       the checks' pytest plugin: --lessons, server logs on failure
progress     the checks' progress table (a pytest plugin)
demo         ./workshop.sh demo
lesson 06's checks:
  tools        the pinned command-line tools (hadolint, docker-compose)
  compose      Compose v2's resolved model of the compose file
  dockerfiles  the Dockerfiles read with dockerfile-parse: stages, COPY lines
  dockerignore Docker's .dockerignore rules
  hostrun      the compose services run as processes on this machine
  engine       the compose stack in a real container engine (Docker or podman)
"""
