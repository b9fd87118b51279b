#!/usr/bin/env bash
# Lesson 02: the segmentation app on Flask's development server. Ctrl-C stops it.
source "$(dirname "$0")/../common.sh"
exec python inference.py
