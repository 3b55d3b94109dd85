"""For tests/odoo.rs: creates a scheduled action in Odoo that records when it ran (the
system parameter named on the command line), due in a day, then triggers it now, as Odoo's
own code does (`ir.cron._trigger`, which NOTIFYs `cron_trigger` at commit). Prints its id.

    python odoo_trigger.py ODOO.CONF DATABASE PARAMETER
"""

import sys

import odoo

conf, database, parameter = sys.argv[1:4]
odoo.tools.config.parse_config(["-c", conf, "--log-level", "warn"])
registry = odoo.registry(database)
with registry.cursor() as cr:
    env = odoo.api.Environment(cr, odoo.SUPERUSER_ID, {})
    cron = env["ir.cron"].create({
        "name": f"forkwarden test {parameter}",
        "model_id": env.ref("base.model_res_partner").id,
        "state": "code",
        "code": f"env['ir.config_parameter'].sudo().set_param({parameter!r}, 'ran')",
        "interval_number": 1,
        "interval_type": "days",
        "nextcall": odoo.fields.Datetime.add(odoo.fields.Datetime.now(), days=1),
    })
    cr.commit()
    cron._trigger()
    cr.commit()
    print(cron.id)
