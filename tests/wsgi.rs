//! The Python runner's WSGI side (PEP 3333): what an application finds in its environ, and
//! what each way of failing gets the client and the log. tests/apps/wsgi_probe.py is the
//! application; the HTTP behaviour shared with the built-in workers is in tests/http.rs.

mod common;

use common::{SOON, Server, parse_reply, python_runner_path, send_raw, wait_until};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn probe_server() -> Server {
    let server = Server::start(&format!(
        "workers = 1\n[app]\ncommand = [\"python3\", \"-m\", \"forkwarden_wsgi\", \
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
          X_Forged: yes\r\nConnection: close\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
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
