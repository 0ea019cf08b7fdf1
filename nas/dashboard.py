"""`nas dashboard`: optuna-dashboard served on a study's storage until Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

import optuna

from nas.storage import StudyError, open_storage
from nas.study import load_study, quiet_optuna


def serve_dashboard(storage: str, study_name: str | None, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve optuna-dashboard on the storage until Ctrl-C; `on_ready` gets the URL (of the study, when there
    is one to show) once the port is bound. Any Optuna study is shown, not only those nas made."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import optuna_dashboard

    quiet_optuna()
    rdb = open_storage(storage)
    page = "dashboard/"
    if study_name is not None or len(optuna.get_all_study_names(rdb)) == 1:
        study = load_study(study_name, storage, nas_only=False)
        page = f"dashboard/studies/{rdb.get_study_id_from_name(study.study_name)}"

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # no line per request
            pass

    try:
        server = make_server(host, port, optuna_dashboard.wsgi(rdb), handler_class=Quiet)
    except OSError as e:
        raise StudyError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port, or 0 for any free one.") from e
    # A shell starts a background job with SIGINT ignored; Ctrl-C must stop the dashboard anyway, as it does a search.
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        on_ready(f"http://{host}:{server.server_port}/{page}")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
