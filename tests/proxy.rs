//! The shipped etc/nginx.conf puts nginx in front of forkwarden for TLS: run it (with a
//! throw-away certificate, on loopback ports of its own) and send requests through it.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{SOON, Server, cannot_check, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Two distinct free ports. Both are held until both are chosen: one after the other, the
/// kernel may hand the same port out twice, and nginx then takes the plain port for the
/// TLS one (it answered 400 "plain HTTP request sent to HTTPS port" in a CI run).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free port");
    let (first, second) = (bind(), bind());
    let port = |listener: &TcpListener| listener.local_addr().expect("bound").port();
    (port(&first), port(&second))
}

fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// nginx, stopped (by pid) when dropped.
struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM, nginx's fast shutdown: its master stops its workers, then exits. A SIGKILL
    /// would leave the workers behind, holding the test's ports.
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("a pid"));
        let _ = kill(pid, Signal::SIGTERM);
        let exited = wait_until(SOON, || self.0.try_wait().ok().flatten().is_some());
        if !exited {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// etc/nginx.conf made runnable here: its certificate, upstream and listen addresses
/// replaced, inside a main config of its own.
fn runnable_config(dir: &Path, upstream: u16, tls: u16, plain: u16) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(REPO).join("etc/nginx.conf")).unwrap();
    let site = shipped
        .replace(
            "/etc/ssl/certs/example.com.pem",
            &dir.join("cert.pem").display().to_string(),
        )
        .replace(
            "/etc/ssl/private/example.com.key",
            &dir.join("key.pem").display().to_string(),
        )
        .replace(
            "server 127.0.0.1:8069;",
            &format!("server 127.0.0.1:{upstream};"),
        )
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{tls} ssl http2;"),
        )
        .replace("listen [::]:443 ssl http2;", "")
        .replace("listen 80;", &format!("listen 127.0.0.1:{plain};"))
        .replace("listen [::]:80;", "");
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let main = format!(
        "daemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
         fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
         include {dir}/site.conf;\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

#[test]
fn the_shipped_nginx_config_serves_forkwarden_over_tls() {
    let Some(nginx) = nginx() else {
        cannot_check("nginx is not installed (.ci/run installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certificate = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=example.com")
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(certificate.success());
    let server = Server::start("workers = 2");
    let (tls, plain) = free_ports();
    let config = runnable_config(dir.path(), server.port, tls, plain);
    let checked = Command::new(&nginx)
        .arg("-t")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let _nginx = Nginx(
        Command::new(&nginx)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let get = |url: &str| -> String {
        let output = Command::new("curl")
            .args(["-sk", "--max-time", "5", "-H", "Host: example.com", url])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let url = format!("https://127.0.0.1:{tls}/pid");
    assert!(
        wait_until(SOON, || get(&url).trim().parse::<i32>().is_ok()),
        "no answer through nginx"
    );
    // Through nginx's pool of kept-alive upstream connections, request after request.
    for _ in 0..20 {
        assert!(get(&url).trim().parse::<i32>().is_ok());
    }
    let redirect = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{plain}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&redirect.stdout), "301");
}
