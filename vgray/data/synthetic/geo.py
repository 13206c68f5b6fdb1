"""Where the synthetic city lies on the Earth, and the UTM → latitude/longitude its file names need."""

from __future__ import annotations

import math

# UTM placement: zone 33T (central meridian 15°E, latitude band 40-48°N). The neighbourhoods sit
# near the central meridian at about 41.9°N, laid out west to east (see ``world.GAP_M``).
UTM_ZONE = 33
UTM_BAND = "T"
ORIGIN_EAST = 500_000.0
ORIGIN_NORTH = 4_640_000.0


def utm_to_latlon(east: float, north: float, zone: int = UTM_ZONE) -> tuple[float, float]:
    """WGS84 latitude/longitude (degrees) of a northern-hemisphere UTM point (Snyder's series).

    Accurate to well under a metre within a zone, which is all a file name needs.
    """
    k0, a, e2 = 0.9996, 6378137.0, 0.00669437999014
    ep2 = e2 / (1 - e2)
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    x, m = east - 500_000.0, north / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    c1, t1 = ep2 * c * c, t * t
    n1 = a / math.sqrt(1 - e2 * s * s)
    r1 = a * (1 - e2) / (1 - e2 * s * s) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d - (1 + 2 * t1 + c1) * d**3 / 6 + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    return math.degrees(lat), (zone - 1) * 6 - 180 + 3 + math.degrees(lon)
