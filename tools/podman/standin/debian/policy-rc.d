#!/bin/sh
# Do not start services while building images (as in the official images).
exit 101
