"""A WSGI app served by gunicorn in tests/tests/restarts.rs (see gunicorn_conf.py)."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
