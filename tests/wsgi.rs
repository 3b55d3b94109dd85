//! The Python runner's WSGI side (PEP 3333): what an application finds in its environ, and
//! what each way of failing gets the client and the log. tests/apps/wsgi_probe.py is the
//! application; the HTTP behaviour shared with the built-in workers is in tests/http.rs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use common::{
    KeepAlive, SOON, Server, parse_reply, python_runner_path, read_response, send_raw, wait_until,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn probe_server() -> Server {
    probe_server_with("")
}

/// The probe under the runner, with top-level `settings`.
fn probe_server_with(settings: &str) -> Server {
    let server = Server::start(&format!(
        "workers = 1\n{settings}\n[app]\ncommand = [\"python3\", \"-m\", \"forkwarden_wsgi\", \
         \"wsgi_probe:app\"]\ncwd = \"{REPO}/tests/apps\"\nready_timeout = \"20s\"\n\
         nonblocking = true\nenv = {{ PYTHONPATH = \"{}\" }}\n",
        python_runner_path()
    ));
    server.wait_until_idle("http worker");
    server
}

/// The value of `key` in the JSON object `json` (the probe's flat environ), as text.
fn field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &json[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        Some(quoted[..end].to_string())
    } else {
        let end = rest.find([',', '}'])?;
        Some(rest[..end].to_string())
    }
}

#[test]
fn the_environ_carries_the_request_as_pep_3333_says() {
    let server = probe_server();
    let reply = parse_reply(&send_raw(
        server.port,
        b"POST /environ/caf%C3%A9%20x?q=1&r=%20 HTTP/1.1\r\nHost: example.test\r\n\
          Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Twice: a\r\nX-Twice: b\r\n\
          X_Forged: yes\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 192.0.2.1\r\n\
          Connection: close\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    ));
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.body;
    let expect = [
        ("REQUEST_METHOD", "POST"),
        // Percent-decoded, as latin-1 code points of the UTF-8 bytes.
        ("PATH_INFO", "/environ/caf\\u00c3\\u00a9 x"),
        ("QUERY_STRING", "q=1&r=%20"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SCRIPT_NAME", ""),
        ("HTTP_HOST", "example.test"),
        ("CONTENT_TYPE", "text/plain"),
        // A chunked body: its decoded length, so that reading CONTENT_LENGTH bytes gets it.
        ("CONTENT_LENGTH", "4"),
        ("body_read", "body"),
        ("HTTP_X_TWICE", "a,b"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("SERVER_NAME", "127.0.0.1"),
        ("wsgi.multiprocess", "true"),
        ("wsgi.multithread", "false"),
        ("wsgi.run_once", "false"),
        ("wsgi.input_terminated", "true"),
        // Without proxy_mode, a client's X-Forwarded-* headers change nothing.
        ("wsgi.url_scheme", "http"),
    ];
    for (key, value) in expect {
        assert_eq!(field(&json, key).as_deref(), Some(value), "{key} in {json}");
    }
    assert_eq!(field(&json, "SERVER_PORT"), Some(server.port.to_string()));
    let remote_port: u16 = field(&json, "REMOTE_PORT").unwrap().parse().unwrap();
    assert!(remote_port > 0 && remote_port != server.port);
    // A header with `_` would collide with its `-` twin: dropped, never forged.
    assert_eq!(field(&json, "HTTP_X_FORGED"), None, "{json}");
    assert!(!json.contains("HTTP_TRANSFER_ENCODING"), "{json}");
}

#[test]
fn with_proxy_mode_the_proxy_s_forwarded_headers_make_the_environ_and_the_access_line() {
    let server = probe_server_with("proxy_mode = true\naccess_log = true");
    let reply = parse_reply(&send_raw(
        server.port,
        b"GET /environ HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\nX-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: shop.example:8443\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.body;
    let expect = [
        // The address the proxy next to us appended (one proxy, as Odoo's proxy_mode).
        ("REMOTE_ADDR", "198.51.100.7"),
        ("wsgi.url_scheme", "https"),
        ("HTTP_HOST", "shop.example:8443"),
        ("SERVER_NAME", "shop.example"),
        ("SERVER_PORT", "8443"),
    ];
    for (key, value) in expect {
        assert_eq!(field(&json, key).as_deref(), Some(value), "{key} in {json}");
    }
    server.wait_for_log("198.51.100.7 - - [");
}

#[test]
fn an_application_that_raises_gets_500_and_its_traceback_logged_and_the_worker_serves_on() {
    let server = probe_server();
    let pid = field(&server.get("/environ").body, "pid").unwrap();
    for path in [
        "/raise",
        "/bad-status",
        "/str-body",
        "/no-start",
        "/header-injection",
    ] {
        let reply = server.get(path);
        assert_eq!(reply.status, 500, "{path}: {reply:?}");
        assert!(!reply.head.contains("injected"), "{reply:?}");
    }
    server.wait_for_log("the application failed serving GET /raise; answered 500");
    server.wait_for_log("[stderr]: ValueError: raised on purpose");
    server.wait_for_log("invalid status \"two hundred\" from the application");
    server.wait_for_log("the application yielded str, not bytes");
    server.wait_for_log("the application returned without calling start_response");
    server.wait_for_log("invalid response header \"X-Value\"");
    assert_eq!(server.get("/wide-header").status, 500);
    server.wait_for_log("response header \"X-Name\" holds '€', not in ISO-8859-1");
    assert_eq!(
        field(&server.get("/environ").body, "pid").unwrap(),
        pid,
        "the same worker serves on"
    );
    assert!(
        server.log_matching("died").is_empty(),
        "{}",
        server.log_text()
    );
}

#[test]
fn close_is_called_whatever_happens_while_iterating() {
    let server = probe_server();
    let reply = server.get("/close");
    assert_eq!((reply.status, reply.body.as_str()), (200, "one two"));
    server.wait_for_log("wsgi_probe: closed (1 so far)");
    assert_eq!(server.get("/close-after-error").status, 500);
    server.wait_for_log("wsgi_probe: closed (2 so far)");
    server.wait_for_log("RuntimeError: failing while iterating, on purpose");
}

#[test]
fn the_write_callable_and_the_file_wrapper_send_their_bytes() {
    let server = probe_server();
    let reply = server.get("/write");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (201, "written, then returned")
    );
    let reply = server.get("/file");
    let source = std::fs::read_to_string(format!("{REPO}/tests/apps/wsgi_probe.py")).unwrap();
    assert_eq!((reply.status, reply.body), (200, source));
}

#[test]
fn a_memory_error_answers_500_and_the_worker_is_replaced() {
    let server = probe_server();
    let reply = server.get("/memory");
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.head.contains("Connection: close"), "{}", reply.head);
    let line = server.wait_for_log("forkwarden_wsgi: MemoryError serving GET /memory");
    assert!(line.contains("this worker leaves to be replaced"), "{line}");
    server.wait_for_log("exited: the application asked to be replaced");
    assert!(wait_until(SOON, || server.get("/environ").status == 200));
}

#[test]
fn a_generator_s_parts_go_out_as_they_come_chunked() {
    let server = probe_server();
    let marker = server.dir.path().join("second-part-may-come");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    let request = format!(
        "GET /stream?marker={} HTTP/1.1\r\nHost: t\r\n\r\n",
        marker.display()
    );
    stream.write_all(request.as_bytes()).unwrap();
    // The first part comes while the application still waits to produce the second.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("first;") {
        let read = stream
            .read(&mut buffer)
            .expect("the first part, before the second");
        assert!(read > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    std::fs::write(&marker, b"").unwrap();
    let mut reader = BufReader::new(stream);
    let mut rest = String::new();
    while !rest.ends_with("0\r\n\r\n") {
        assert!(reader.read_line(&mut rest).unwrap() > 0, "{head}{rest}");
    }
    let whole = parse_reply(&format!("{head}{rest}"));
    assert_eq!(whole.body, "first;second");
    // The connection carries the next request.
    let mut keep_alive = reader;
    keep_alive
        .get_mut()
        .write_all(b"GET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let next = read_response(&mut keep_alive).expect("a response on the same connection");
    assert_eq!(next.status, 200);
}

#[test]
fn a_stated_length_frames_a_streamed_body_and_http_1_0_gets_it_until_close() {
    let server = probe_server();
    let mut connection = KeepAlive::connect(server.port);
    let reply = connection.get("/stream-length");
    assert_eq!(reply.body, "1234567890", "{reply:?}");
    assert!(reply.head.contains("Content-Length: 10\r\n"), "{reply:?}");
    assert!(!reply.head.contains("chunked"), "{reply:?}");
    // Past the stated length nothing went out: the next response on the connection is whole.
    assert_eq!(connection.get("/environ").status, 200);
    let reply = connection.get("/first-part-too-long");
    assert_eq!(reply.body, "1234", "{reply:?}");
    assert!(reply.head.contains("Content-Length: 4\r\n"), "{reply:?}");
    assert_eq!(connection.get("/environ").status, 200);
    // Shorter than stated: the client sees the connection end, not a complete body.
    let short = send_raw(
        server.port,
        b"GET /stream-short HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert!(short.ends_with("\r\n\r\n123456"), "{short}");
    let old = send_raw(
        server.port,
        b"GET /close HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    let reply = parse_reply(&old);
    assert_eq!(reply.body, "one two", "{old}");
    assert!(reply.head.contains("Connection: close"), "{old}");
    assert!(!reply.head.contains("chunked"), "{old}");
}

#[test]
fn a_generator_that_fails_mid_body_ends_the_connection_and_is_closed() {
    let server = probe_server();
    let text = send_raw(server.port, b"GET /stream-fail HTTP/1.1\r\nHost: t\r\n\r\n");
    // The head and first part went out; no last chunk: the client knows it is cut short.
    assert!(text.contains("part one;"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    server.wait_for_log("the application failed while its response was being sent");
    server.wait_for_log("RuntimeError: failing while iterating, on purpose");
    server.wait_for_log("wsgi_probe: closed (1 so far)");
    assert_eq!(server.get("/environ").status, 200);
}

#[test]
fn a_wrapped_regular_file_goes_out_by_sendfile_from_where_the_application_left_it() {
    let server = probe_server();
    let source = std::fs::read_to_string(format!("{REPO}/tests/apps/wsgi_probe.py")).unwrap();
    let reply = server.get("/sendfile?skip=100");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, source[100..]);
    // Its length is known: stated, not chunked.
    assert!(
        reply
            .head
            .contains(&format!("Content-Length: {}\r\n", source.len() - 100)),
        "{}",
        reply.head
    );
    // One read: the application's own (skipping 100 bytes); none to send the file.
    assert_eq!(server.get("/file-reads").body, "1");
    let mut connection = KeepAlive::connect(server.port);
    assert_eq!(connection.get("/sendfile").body, source);
    assert_eq!(connection.get("/file-reads").body, "1");
}

#[test]
fn a_large_body_reaches_wsgi_input_from_a_temporary_file_and_a_small_one_from_memory() {
    let server = probe_server();
    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|index| (index % 251) as u8)
        .collect();
    let mut request = format!(
        "POST /input HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend(&body);
    let reply = parse_reply(&send_raw(server.port, &request));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        field(&reply.body, "kind").as_deref(),
        Some("BufferedReader")
    );
    assert_eq!(field(&reply.body, "length"), Some(body.len().to_string()));
    assert_eq!(
        field(&reply.body, "content_length"),
        Some(body.len().to_string())
    );
    let digest = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(&body)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    let digest = String::from_utf8_lossy(&digest.stdout);
    assert_eq!(
        field(&reply.body, "sha256").as_deref(),
        digest.split_whitespace().next()
    );
    let small = parse_reply(&send_raw(
        server.port,
        b"POST /input HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    ));
    assert_eq!(field(&small.body, "kind").as_deref(), Some("BytesIO"));
    assert_eq!(field(&small.body, "length").as_deref(), Some("2"));
}

#[test]
fn header_values_go_out_as_iso_8859_1_bytes() {
    let server = probe_server();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream
        .write_all(b"GET /latin1-header HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    // `café` as latin-1: one byte 0xE9, not UTF-8's two.
    let needle = b"X-Name: caf\xe9\r\n";
    assert!(
        raw.windows(needle.len()).any(|window| window == needle),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn sys_exit_in_a_request_ends_that_request_not_the_server() {
    // Before: PyErr_Print exits the process on SystemExit, with its code: 3, the critical
    // status, stopped the whole server.
    let server = probe_server();
    let first = server.get("/pid").body;
    let reply = server.get("/exit");
    assert_eq!(reply.status, 500, "{reply:?}");
    server.wait_for_log("the application raised SystemExit(3) serving GET /exit; answered 500");
    let line = server.wait_for_log("respawned as pid");
    assert!(
        line.contains("the application asked to be replaced"),
        "{line}"
    );
    wait_for_another_worker(&server, &first);
    assert!(server.log_matching("stopping the server").is_empty());
}

/// Waits until a worker other than `first` (a pid, as /pid answers) serves.
fn wait_for_another_worker(server: &Server, first: &str) {
    assert!(
        wait_until(SOON, || {
            let pid = server.get("/pid");
            pid.status == 200 && pid.body != first
        }),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_worker_held_by_a_thread_of_the_application_still_leaves() {
    // Before: after limit_request, Python waited at exit for the application's non-daemon
    // thread: the slot served nobody until heartbeat_timeout, for ever without one.
    let server = probe_server_with("limit_request = 2\nheartbeat_timeout = 0");
    let first = server.get("/pid").body;
    assert_eq!(server.get("/thread").status, 200);
    let line = server.wait_for_log("exited: limit_request reached");
    assert!(line.contains("respawned as pid"), "{line}");
    wait_for_another_worker(&server, &first);
}

#[test]
fn the_hand_off_alarm_leaves_the_applications_sigalrm_alone() {
    // Before: the alarm that hands a busy worker's other connections over was SIGALRM,
    // re-armed every 20 ms during a long request: an application's own SIGALRM handler
    // (signal.alarm, timeouts) was fired by it, and replaced it.
    let server = probe_server();
    // Another connection held, idle, by the one worker: the alarm is armed for it.
    let mut held = KeepAlive::connect(server.port);
    assert_eq!(held.get("/pid").status, 200);
    let reply = server.get("/sigalrm");
    assert_eq!((reply.status, reply.body.as_str()), (200, "0"), "{reply:?}");
    assert_eq!(held.get("/pid").status, 200);
}

#[test]
fn a_worker_kit_of_another_version_is_refused_on_both_sides() {
    // Before: a size check that accepted "at least this big": a wheel and a binary of other
    // layouts ran with the limits read at the wrong places.
    let runner = Command::new("python3")
        .args(["-m", "forkwarden_wsgi", "wsgi_probe:app"])
        .current_dir(format!("{REPO}/tests/apps"))
        .env("PYTHONPATH", python_runner_path())
        .env("FORKWARDEN_KIT_VERSION", "1")
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the runner");
    let stderr = String::from_utf8_lossy(&runner.stderr);
    assert!(!runner.status.success());
    assert!(
        stderr.contains("the server hands worker kit version 1, this worker speaks version 3"),
        "{stderr}"
    );
    // A program that says it runs forkwarden's worker with another kit is killed, and
    // started again with backoff, as one that failed to start.
    let server = Server::start(
        "workers = 1\n[app]\ncommand = [\"/usr/bin/python3\", \"-c\", \"import os, socket, \
         time; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(\
         b'READY=1\\\\nSCOREBOARD=1\\\\nKIT_VERSION=1', os.environ['NOTIFY_SOCKET']); \
         time.sleep(60)\"]\n",
    );
    let line = server.wait_for_log("its worker kit is version 1, the server's is 3");
    assert!(line.contains("killed"), "{line}");
    server.wait_for_log("failed starts in a row");
}
