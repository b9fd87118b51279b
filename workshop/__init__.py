"""Shared machinery for the workshop's lessons, checks and benchmarks.

procs    start/stop servers as process groups, wait for them, free ports
lessons  where the lessons live (reference or a learner's workspace)
nginx    render nginx configs from one template, run nginx without root
images   sample photos and deliberately broken uploads
"""
