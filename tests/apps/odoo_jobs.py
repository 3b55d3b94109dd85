"""Job functions tests/odoo.rs runs in the preloaded Odoo (`[[job]] call`), as docs/jobs.md
shows: each opens an environment on its database; `fan_out` enqueues more jobs with Odoo's
own cursor (env.cr), in its transaction."""

import odoo

from forkwarden_wsgi import jobs


def fan_out(db, key, count):
    registry = odoo.registry(db)
    with registry.cursor() as cr:
        env = odoo.api.Environment(cr, odoo.SUPERUSER_ID, {})
        for n in range(count):
            jobs.enqueue(env.cr, "set_parameter", {"db": db, "key": f"{key}.{n}", "value": str(n)})


def set_parameter(db, key, value):
    registry = odoo.registry(db)
    with registry.cursor() as cr:
        env = odoo.api.Environment(cr, odoo.SUPERUSER_ID, {})
        env["ir.config_parameter"].set_param(key, value)
