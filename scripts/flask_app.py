"""The Flask application scripts/compare_wsgi.py serves with every WSGI server: a page
rendered from a Jinja template (/page) and a JSON endpoint (/api), as a typical small web
application has; /health for readiness."""

import os

from flask import Flask, jsonify, render_template

app = Flask(__name__, template_folder=os.path.join(os.path.dirname(__file__), "templates"))

ITEMS = [{"id": n, "name": f"item {n}", "price": n * 1.25} for n in range(20)]


@app.route("/page")
def page():
    return render_template("page.html", title="Items", items=ITEMS)


@app.route("/api")
def api():
    return jsonify(count=len(ITEMS), items=ITEMS[:5], pid=os.getpid())


@app.route("/health")
def health():
    return "ok\n"
