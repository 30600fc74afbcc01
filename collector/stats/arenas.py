"""Arena display names: the game sends the map's file name (``Stadium_P``, ``cs_p``...).

Codes are matched whatever their case; an unknown code is shown as it came.
"""

from __future__ import annotations

from typing import Final

#: Map file name (lower case) -> the name the game shows.
ARENAS: Final[dict[str, str]] = {
    # Standard soccar arenas
    "stadium_p": "DFH Stadium",
    "stadium_day_p": "DFH Stadium (Day)",
    "stadium_foggy_p": "DFH Stadium (Stormy)",
    "stadium_winter_p": "DFH Stadium (Snowy)",
    "stadium_race_day_p": "DFH Stadium (Circuit)",
    "stadium_10a_p": "DFH Stadium (10th Anniversary)",
    "eurostadium_p": "Mannfield",
    "eurostadium_night_p": "Mannfield (Night)",
    "eurostadium_rainy_p": "Mannfield (Stormy)",
    "eurostadium_snownight_p": "Mannfield (Snowy)",
    "eurostadium_dusk_p": "Mannfield (Dusk)",
    "cs_p": "Champions Field",
    "cs_day_p": "Champions Field (Day)",
    "cs_hw_p": "Rivals Arena",
    "swoosh_p": "Champions Field (Nike FC)",
    "bb_p": "Champions Field (NFL)",
    "trainstation_p": "Urban Central",
    "trainstation_night_p": "Urban Central (Night)",
    "trainstation_dawn_p": "Urban Central (Dawn)",
    "trainstation_spooky_p": "Urban Central (Haunted)",
    "haunted_trainstation_p": "Urban Central (Haunted)",
    "park_p": "Beckwith Park",
    "park_night_p": "Beckwith Park (Midnight)",
    "park_rainy_p": "Beckwith Park (Stormy)",
    "park_snowy_p": "Beckwith Park (Snowy)",
    "park_bman_p": "Beckwith Park (Gotham Night)",
    "utopiastadium_p": "Utopia Coliseum",
    "utopiastadium_dusk_p": "Utopia Coliseum (Dusk)",
    "utopiastadium_snow_p": "Utopia Coliseum (Snowy)",
    "utopiastadium_lux_p": "Utopia Coliseum (Gilded)",
    "wasteland_s_p": "Wasteland (Standard)",
    "wasteland_night_s_p": "Wasteland (Standard, Night)",
    "wasteland_p": "Wasteland",
    "wasteland_night_p": "Wasteland (Night)",
    "wasteland_grs_p": "Wasteland (Pitched)",
    "neotokyo_standard_p": "Neo Tokyo (Standard)",
    "neotokyo_p": "Neo Tokyo",
    "neotokyo_toon_p": "Neo Tokyo (Comic)",
    "neotokyo_arcade_p": "Neo Tokyo (Arcade)",
    "neotokyo_hax_p": "Neo Tokyo (Hacked)",
    "underwater_p": "AquaDome",
    "underwater_grs_p": "AquaDome (Salty Shallows)",
    "arc_standard_p": "Starbase ARC (Standard)",
    "arc_p": "Starbase ARC",
    "arc_darc_p": "Starbase ARC (Aftermath)",
    "farm_p": "Farmstead",
    "farm_night_p": "Farmstead (Night)",
    "farm_upsidedown_p": "Farmstead (The Upside Down)",
    "farm_hw_p": "Farmstead (Spooky)",
    "farm_grs_p": "Farmstead (Pitched)",
    "chinatown_p": "Forbidden Temple",
    "chinatown_day_p": "Forbidden Temple (Day)",
    "chinatown_fire_p": "Forbidden Temple (Fire & Ice)",
    "beach_p": "Salty Shores",
    "beach_night_p": "Salty Shores (Night)",
    "beach_night_grs_p": "Salty Shores (Salty Fest)",
    "music_p": "Neon Fields",
    "outlaw_p": "Deadeye Canyon",
    "outlaw_oasis_p": "Deadeye Canyon (Oasis)",
    "street_p": "Sovereign Heights",
    "woods_p": "Drift Woods",
    "woods_night_p": "Drift Woods (Night)",
    "ff_dusk_p": "Estadio Vida",
    "fni_stadium_p": "Futura Garden",
    "throwbackstadium_p": "Throwback Stadium",
    "throwbackhockey_p": "Throwback Stadium (Snowy)",
    # Other modes
    "hoopsstadium_p": "Dunk House",
    "hoopsstreet_p": "The Block (Dusk)",
    "shattershot_p": "Core 707",
    "labs_octagon_02_p": "Octagon",
    "labs_circlepillars_p": "Pillars",
    "labs_cosmic_v4_p": "Cosmic",
    "labs_doublegoal_v2_p": "Double Goal",
    "labs_underpass_p": "Underpass",
    "labs_utopia_p": "Utopia Retro",
    "labs_basin_p": "Basin",
    "labs_corridor_p": "Corridor",
    "labs_galleon_p": "Galleon",
}


def arena_name(code: str | None) -> str | None:
    """The display name of an arena code (any case); an unknown code as it came."""
    if code is None:
        return None
    return ARENAS.get(code.strip().lower(), code)
