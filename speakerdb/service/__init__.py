"""``speakerdb serve``: the HTTP service (FastAPI on uvicorn; ``pip install 'speakerdb[serve]'``).

    from speakerdb.service import ServiceSettings, create_app
    app = create_app(ServiceSettings(db_url="postgresql+psycopg://...", auth="required"))

Routes call the SpeakerDB facade and nothing deeper; see :mod:`speakerdb.service._routes`.
"""

from speakerdb.service._app import app_from_environment, create_app
from speakerdb.service._settings import ServiceSettings, is_loopback

__all__ = ["ServiceSettings", "app_from_environment", "create_app", "is_loopback"]
