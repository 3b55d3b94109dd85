//! `cron_store`: the PostgreSQL database that several hosts share for their cron jobs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where the cron store's password comes from (libpq's variables, read by the cron workers):
/// the master's alone. A program, template or cron job inherits neither, so that libpq in an
/// application never takes the cron store's password for its own database; a program whose
/// `env` sets one gets that.
pub const PASSWORD_VARIABLES: [&str; 2] = ["PGPASSWORD", "PGPASSFILE"];

/// A checked `cron_store` address: `postgresql://USER@HOST:PORT/DBNAME` (or libpq's
/// `key=value` form). It names the user and the database, holds no password (that comes from
/// `PGPASSWORD` or a `.pgpass` file, so that the config, which every worker is handed and
/// `forkwarden check` prints, never carries it), and asks for no TLS (not built in).
#[derive(Clone)]
pub struct CronStoreUrl {
    text: String,
    parsed: postgres::Config,
}

impl CronStoreUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed: postgres::Config = text.parse().map_err(|error| {
            format!(
                "{:?} is not a PostgreSQL address ({error}); expected one such as \
                 \"postgresql://forkwarden@db.internal:5432/odoo\"",
                without_password(text)
            )
        })?;
        if parsed.get_password().is_some() {
            return Err(
                "holds a password, which would then be in the config that every worker \
                        is handed; remove it, and give it in the server's environment \
                        (PGPASSWORD) or a .pgpass file (PGPASSFILE)"
                    .into(),
            );
        }
        if parsed.get_user().is_none() {
            return Err(format!(
                "{text:?} names no user; write it as postgresql://USER@HOST:PORT/DBNAME"
            ));
        }
        if parsed.get_dbname().is_none() {
            return Err(format!(
                "{text:?} names no database; write it as postgresql://USER@HOST:PORT/DBNAME"
            ));
        }
        if parsed.get_hosts().is_empty() {
            return Err(format!(
                "{text:?} names no host; write it as postgresql://USER@HOST:PORT/DBNAME (a Unix \
                 socket directory percent-encoded: postgresql://USER@%2Fvar%2Frun%2Fpostgresql/DBNAME)"
            ));
        }
        if parsed.get_ssl_mode() == postgres::config::SslMode::Require {
            return Err(
                "sslmode=require: forkwarden's PostgreSQL connection has no TLS yet; \
                        reach the database over a private network or a Unix socket"
                    .into(),
            );
        }
        Ok(Self {
            text: text.to_string(),
            parsed,
        })
    }

    /// The connection settings, without a password.
    pub fn settings(&self) -> &postgres::Config {
        &self.parsed
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `text` with what may be a password replaced by `***`: `user:SECRET@` in an address,
/// `password=SECRET` in the `key=value` form.
fn without_password(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
        }
        return text.to_string();
    }
    text.split_whitespace()
        .map(|part| match part.split_once('=') {
            Some(("password", _)) => "password=***",
            _ => part,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PartialEq for CronStoreUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Debug for CronStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for CronStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for CronStoreUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronStoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_must_name_user_and_database_and_hold_no_password() {
        let good = CronStoreUrl::parse("postgresql://fw@db.internal:5433/odoo").unwrap();
        assert_eq!(good.settings().get_user(), Some("fw"));
        assert_eq!(good.settings().get_ports(), [5433]);
        let socket = CronStoreUrl::parse("postgresql://fw@%2Fvar%2Frun%2Fpostgresql/odoo");
        assert!(socket.is_ok(), "{socket:?}");
        for (bad, says) in [
            ("postgresql://fw:secret@db/odoo", "password"),
            ("postgresql://db/odoo", "no user"),
            ("postgresql://fw@db", "no database"),
            ("postgresql://fw@db/odoo?sslmode=require", "TLS"),
            ("mysql://fw@db/odoo", "not a PostgreSQL address"),
            ("postgresql://fw:secret@db:notaport/odoo", "fw:***@db"),
            ("host=db password=secret bogus", "password=***"),
        ] {
            let error = CronStoreUrl::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
