#!/usr/bin/env bash
# Lesson 01: start the echo server. Ctrl-C stops it.
source "$(dirname "$0")/../common.sh"
exec python inference.py
