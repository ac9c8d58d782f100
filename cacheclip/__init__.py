"""cacheclip: few-shot CLIP adaptation (CLIP-Adapter and baselines) on cached open_clip features."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cacheclip")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
