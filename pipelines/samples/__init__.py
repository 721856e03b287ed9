"""The embedded sample catalog: real products (when present) plus seeded synthetic ones.

* ``catalog``: :func:`build_sample_catalog`;
* ``synthetic``, ``landcover``: seeded synthetic products whose bands come from the sensor registry;
* ``real`` (+ ``real_sentinel2``, ``real_landsat``, ``real_assets``): STAC items for the real products;
* ``stac_fields``: STAC fields and COG writing shared by both.
"""

from pipelines.samples.catalog import (
    DEFAULT_REAL_RELATIVE,
    REAL_DATA_ENV,
    SampleCatalog,
    build_sample_catalog,
    default_real_data_dir,
)
from pipelines.samples.landcover import (
    LANDCOVER_CLASSES,
    LANDCOVER_SPECTRA,
    band_reflectance,
    generate_landcover,
)
from pipelines.samples.real import build_real_items
from pipelines.samples.stac_fields import CORE_EXTENSIONS, apply_transform
from pipelines.samples.synthetic_spec import SyntheticSpec

__all__ = [
    "CORE_EXTENSIONS",
    "DEFAULT_REAL_RELATIVE",
    "LANDCOVER_CLASSES",
    "LANDCOVER_SPECTRA",
    "REAL_DATA_ENV",
    "SampleCatalog",
    "SyntheticSpec",
    "apply_transform",
    "band_reflectance",
    "build_real_items",
    "build_sample_catalog",
    "default_real_data_dir",
    "generate_landcover",
]
