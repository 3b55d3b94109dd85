# Routes tests/odoo.rs asks real Odoo for: loaded as a server-wide module
# (server_wide_modules = base,web,forkwarden_test), so nothing is installed in the database.
{
    "name": "forkwarden test routes",
    "version": "17.0.1.0",
    "depends": ["base", "web"],
    "license": "LGPL-3",
    "installable": True,
}
