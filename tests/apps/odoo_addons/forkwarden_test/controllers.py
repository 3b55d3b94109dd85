"""A slow route (to cross limit_time_real) and one that says which code is loaded."""

import time

from odoo import http

from . import version


class ForkwardenTest(http.Controller):
    @http.route("/forkwarden_test/sleep", type="http", auth="none")
    def sleep(self, seconds="1"):
        time.sleep(min(float(seconds), 60.0))
        return "slept"

    @http.route("/forkwarden_test/version", type="http", auth="none")
    def version(self):
        return version.VERSION
