"""Is this file a Cloud-Optimised GeoTIFF? (tests only)

Two independent checks: rio-cogeo's validator where it is installed, and always the layout itself
read from the file: the main IFD right after the header (GDAL's ghost area is a few hundred bytes),
internal tiles, overviews when the raster is larger than one tile, and GDAL's own ``LAYOUT=COG``.
"""

from __future__ import annotations

import struct
from pathlib import Path


def main_ifd_offset(path: str | Path) -> int:
    """Byte offset of the first (main) IFD, from the TIFF header (classic or BigTIFF)."""
    head = Path(path).read_bytes()[:16]
    order = "<" if head[:2] == b"II" else ">"
    magic = struct.unpack(order + "H", head[2:4])[0]
    if magic == 42:
        return int(struct.unpack(order + "I", head[4:8])[0])
    if magic == 43:
        return int(struct.unpack(order + "Q", head[8:16])[0])
    raise ValueError(f"{path} is not a TIFF (magic {magic})")


def cog_problems(path: str | Path) -> list[str]:
    """Empty when ``path`` is a valid COG; otherwise what is wrong."""
    import rasterio

    problems: list[str] = []
    offset = main_ifd_offset(path)
    if offset > 4096:
        problems.append(f"main IFD at byte {offset}, not at the start of the file")
    with rasterio.open(path) as ds:
        if not ds.profile.get("tiled"):
            problems.append("not tiled")
        bx, by = ds.block_shapes[0]
        if (ds.width > bx or ds.height > by) and not ds.overviews(1):
            problems.append(f"{ds.width}x{ds.height} raster larger than one {bx}x{by} tile but no overviews")
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("GDAL does not report LAYOUT=COG")
    try:
        from rio_cogeo.cogeo import cog_validate
    except ImportError:
        return problems
    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    if not valid:
        problems += [f"rio-cogeo: {e}" for e in errors]
    return problems
