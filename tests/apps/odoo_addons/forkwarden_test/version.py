# tests/odoo.rs rewrites this line, then reloads the server: the new code must answer.
VERSION = "1"
