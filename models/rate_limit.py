"""Fixed-window counters of the login rate limit, shared by every web process.

One row per limit key (client address and limit); ``expires_at`` is a Unix
time. A row whose window has passed is reused by the next increment, so the
table holds at most one row per key ever seen.
"""

from __future__ import annotations

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class RateLimitCounter(Base):
    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[float] = mapped_column(Float)
