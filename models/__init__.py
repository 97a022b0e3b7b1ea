"""SQLAlchemy models, sessions and the artifact store.

Depends on ``latent_atlas.settings`` only. The database is the truth about a
run; the broker is only transport.
"""

from models.base import Base
from models.dispatch import DispatchLock, WorkerSlot
from models.rate_limit import RateLimitCounter
from models.run import TERMINAL_STATUSES, Artifact, Run, RunStatus
from models.session import get_engine, get_sessionmaker, session_scope
from models.shard import RunShard, ShardStatus
from models.user import ApiToken, User

__all__ = [
    "ApiToken",
    "Artifact",
    "Base",
    "DispatchLock",
    "RateLimitCounter",
    "Run",
    "RunShard",
    "RunStatus",
    "ShardStatus",
    "TERMINAL_STATUSES",
    "User",
    "WorkerSlot",
    "get_engine",
    "get_sessionmaker",
    "session_scope",
]
