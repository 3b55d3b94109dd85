//! The password of a PostgreSQL `cron_store`, found as libpq finds it (the `postgres` crate
//! does not look): `PGPASSWORD`, else the first matching line of the password file
//! (`PGPASSFILE`, else `~/.pgpass`), which is ignored, as libpq does, when other users may
//! read it. The password is never logged.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use postgres::config::Host;
use tracing::warn;

/// libpq's default port, which a password file line names when the address names none.
const DEFAULT_PORT: u16 = 5432;

/// The password for `settings` from the environment or the password file; None: connect
/// without one (trust, peer or certificate authentication).
pub fn password_for(settings: &postgres::Config) -> Option<String> {
    if let Some(password) = std::env::var_os("PGPASSWORD") {
        return Some(password.to_string_lossy().into_owned());
    }
    let file = password_file()?;
    let metadata = std::fs::metadata(&file).ok()?;
    if metadata.permissions().mode() & 0o077 != 0 {
        warn!(
            file = %file.display(),
            "password file {} has group or world access; ignored (chmod 0600 it), as libpq does",
            file.display()
        );
        return None;
    }
    lookup(&std::fs::read_to_string(&file).ok()?, settings)
}

/// The password of the first line of password file `text` that matches `settings`.
fn lookup(text: &str, settings: &postgres::Config) -> Option<String> {
    let host = match settings.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let local = matches!(settings.get_hosts().first(), Some(Host::Unix(_)) | None);
    let port = settings
        .get_ports()
        .first()
        .copied()
        .unwrap_or(DEFAULT_PORT)
        .to_string();
    let wanted = [
        host.as_str(),
        &port,
        settings.get_dbname().unwrap_or_default(),
        settings.get_user().unwrap_or_default(),
    ];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(fields)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .enumerate()
                .all(|(at, (field, want))| {
                    field == "*" || field == want || (at == 0 && local && field == "localhost")
                })
        })
        .map(|mut fields| fields.swap_remove(4))
}

fn password_file() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(file));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass"))
}

/// The five fields of a password file line (`host:port:database:user:password`, with `\:`
/// and `\\` escaped); None for a line with fewer.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut characters = line.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => fields.last_mut()?.push(characters.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            other => fields.last_mut()?.push(other),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_unescaped_colons() {
        assert_eq!(
            fields(r"db:5432:odoo:fw:se\:cr\\et").unwrap(),
            ["db", "5432", "odoo", "fw", r"se:cr\et"]
        );
        assert_eq!(fields("db:5432:odoo:fw:a:b").unwrap()[4], "a:b");
        assert!(fields("db:5432:odoo").is_none());
    }

    #[test]
    fn the_first_matching_line_gives_the_password() {
        let text = "# comment\nother:5432:*:*:no\ndb:5433:odoo:fw:wrong-port\n\
                    db:5432:*:fw:yes\n*:*:*:*:fallback\n";
        let settings: postgres::Config = "postgresql://fw@db/odoo".parse().unwrap();
        assert_eq!(lookup(text, &settings).as_deref(), Some("yes"));
        let settings: postgres::Config = "postgresql://fw@db:5433/odoo".parse().unwrap();
        assert_eq!(lookup(text, &settings).as_deref(), Some("wrong-port"));
        let settings: postgres::Config = "postgresql://x@elsewhere/y".parse().unwrap();
        assert_eq!(lookup(text, &settings).as_deref(), Some("fallback"));
        // A Unix socket is matched by `localhost`, as libpq does.
        let settings: postgres::Config =
            "postgresql://fw@%2Frun%2Fpostgresql/odoo".parse().unwrap();
        assert_eq!(
            lookup("localhost:5432:odoo:fw:local\n", &settings).as_deref(),
            Some("local")
        );
        assert_eq!(lookup("db:5432:odoo:fw:x\n", &settings), None);
    }
}
