//! A PostgreSQL cluster of a test's own: initdb in a temporary directory, on a free
//! loopback port, password authentication (PASSWORD, given to the servers as PGPASSWORD),
//! stopped when dropped, so that stopping it disturbs no other test.

use std::path::PathBuf;
use std::process::Command;

pub const PASSWORD: &str = "fw-test-secret";

/// A PostgreSQL cluster of the test's own, stopped (fast) when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// A new cluster, started; None (the test is skipped, saying why) without PostgreSQL's
    /// programs on this machine.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = postgres_bin() else {
            super::cannot_check("no PostgreSQL server programs (initdb) on this machine");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("pw"), PASSWORD).expect("password file");
        if nix::unistd::geteuid().is_root() {
            // initdb refuses to run as root: the cluster belongs to `postgres`.
            let owner = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres user (Debian's postgresql package makes one)");
            for path in [dir.path().to_path_buf(), dir.path().join("pw")] {
                nix::unistd::chown(&path, Some(owner.uid), Some(owner.gid)).expect("chown");
            }
        }
        let port = free_port();
        let cluster = Cluster { dir, bin, port };
        cluster.as_owner(&format!(
            "{initdb} -D {data} -U forkwarden --pwfile={pw} -A scram-sha-256 --no-sync -E UTF8 \
             > {dir}/initdb.log 2>&1",
            initdb = cluster.bin.join("initdb").display(),
            data = cluster.data().display(),
            pw = cluster.dir.path().join("pw").display(),
            dir = cluster.dir.path().display(),
        ));
        cluster.start_again();
        Some(cluster)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The `cron_store` of the servers (the password comes from PGPASSWORD).
    pub fn url(&self) -> String {
        format!("postgresql://forkwarden@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_again(&self) {
        self.pg_ctl(&format!(
            "-l {dir}/server.log -o \"-p {port} -k {dir} -c listen_addresses=127.0.0.1 \
             -c fsync=off\" start",
            dir = self.dir.path().display(),
            port = self.port
        ));
    }

    pub fn stop(&self) {
        self.pg_ctl("-m fast stop");
    }

    pub fn pg_ctl(&self, arguments: &str) {
        self.as_owner(&format!(
            "{} -D {} -w -t 60 {arguments} >> {}/pg_ctl.log 2>&1",
            self.bin.join("pg_ctl").display(),
            self.data().display(),
            self.dir.path().display()
        ));
    }

    /// Runs `command` with sh as the cluster's owner (`postgres` when the tests run as root).
    pub fn as_owner(&self, command: &str) {
        let status = if nix::unistd::geteuid().is_root() {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", command])
                .status()
        } else {
            Command::new("sh").args(["-c", command]).status()
        };
        let log =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        assert!(
            status.is_ok_and(|status| status.success()),
            "{command} failed; initdb.log:\n{}\npg_ctl.log:\n{}\nserver.log:\n{}",
            log("initdb.log"),
            log("pg_ctl.log"),
            log("server.log")
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let command = format!(
                "{} -D {} -m immediate stop >/dev/null 2>&1",
                self.bin.join("pg_ctl").display(),
                self.data().display()
            );
            if nix::unistd::geteuid().is_root() {
                let _ = Command::new("su")
                    .args(["postgres", "-s", "/bin/sh", "-c", &command])
                    .status();
            } else {
                let _ = Command::new("sh").args(["-c", &command]).status();
            }
        }
    }
}

/// The directory of PostgreSQL's server programs (Debian keeps them off PATH), the newest.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|version| version.file_name()?.to_str()?.parse::<u32>().ok())
    });
    found.pop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl Cluster {
    /// A connection to the cluster's database, as the servers' user.
    pub fn client(&self) -> ::postgres::Client {
        let settings = format!(
            "host=127.0.0.1 port={} user=forkwarden password={PASSWORD} dbname=postgres",
            self.port
        );
        ::postgres::Client::connect(&settings, ::postgres::NoTls).expect("connect to the cluster")
    }
}
