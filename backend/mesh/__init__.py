"""Mesh maths and drawing shared by preview, extraction and export (numpy and OpenCV only)."""
