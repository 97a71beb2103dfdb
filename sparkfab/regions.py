"""The one list of AWS regions sparkfab may use: EU only, so data stays under the GDPR.

Every AWS client is created through `sparkfab.aws.session`, which calls `require_eu`
first: a non-EU region is refused before any request leaves this machine.
"""

from __future__ import annotations

from sparkfab.errors import UserError

EU_REGIONS: tuple[str, ...] = (
    "eu-west-1",  # Ireland
    "eu-west-2",  # London
    "eu-west-3",  # Paris
    "eu-central-1",  # Frankfurt
    "eu-central-2",  # Zurich (opt-in)
    "eu-north-1",  # Stockholm
    "eu-south-1",  # Milan (opt-in)
    "eu-south-2",  # Spain (opt-in)
)
# Regions an account must enable before use; named in hints when their calls fail.
OPT_IN_REGIONS: frozenset[str] = frozenset({"eu-central-2", "eu-south-1", "eu-south-2"})


def require_eu(region: str | None) -> str:
    """Return `region` if it is an EU region, else raise a UserError."""
    if region not in EU_REGIONS:
        raise UserError(
            f"region {region!r} is not an EU region; sparkfab only runs in the EU (GDPR)",
            hint="set region to one of: " + ", ".join(EU_REGIONS),
        )
    return region
