//! HTTP workers: bad input gets a clear status and the worker lives on; keep-alive,
//! pipelining, `Expect: 100-continue`, chunked bodies, HEAD, recycling (the per-request
//! limits are in tests/limits.rs). Each test runs against the built-in workers and against the Python runner (the
//! same worker loop, in the `_core` extension, with a WSGI app): see [`Flavour`].

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::{Flavour, KeepAlive, Reply, SOON, Server, parse_reply, read_response, send_raw};

against_both!(
    malformed_requests_get_400_and_the_worker_survives,
    every_class_of_bad_request_gets_its_status,
    keep_alive_connections_serve_several_requests,
    pipelined_requests_are_answered_in_order,
    a_client_with_requests_queued_does_not_hold_the_worker_from_others,
    expect_100_continue_is_answered_before_the_body_is_sent,
    chunked_and_sized_bodies_reach_the_application_whole,
    head_gets_the_head_of_get,
    a_worker_is_recycled_after_limit_request_requests,
    a_worker_serves_exactly_limit_request_requests_among_many_connections,
    more_keep_alive_clients_than_workers_all_get_answers,
    no_fast_request_waits_behind_a_slow_one_while_a_worker_could_serve_it,
    reloads_and_scaling_under_keep_alive_load_lose_no_request,
    each_request_gets_an_access_line_from_the_worker_that_served_it,
    access_lines_are_json_objects_with_log_format_json,
);

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream
}

fn malformed_requests_get_400_and_the_worker_survives(flavour: Flavour) {
    let server = flavour.server("", 1);
    let pid = server.get("/pid").body;
    let reply = parse_reply(&send_raw(server.port, b"THIS IS NOT HTTP\r\n\r\n"));
    assert_eq!(reply.status, 400, "{reply:?}");
    let reply = parse_reply(&send_raw(
        server.port,
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: ten\r\n\r\n",
    ));
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(server.get("/pid").body, pid, "the same worker still serves");
}

fn every_class_of_bad_request_gets_its_status(flavour: Flavour) {
    let server = flavour.server("http_max_body_size = 16", 1);
    let pid = server.get("/pid").body;
    let huge_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    let cases: [(&[u8], u16); 3] = [
        (huge_header.as_bytes(), 431),
        (
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n",
            413,
        ),
        (
            b"GET /no-such-path HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            404,
        ),
    ];
    for (request, status) in cases {
        let reply = parse_reply(&send_raw(server.port, request));
        assert_eq!(reply.status, status, "{reply:?}");
    }
    assert_eq!(server.get("/pid").body, pid, "the same worker still serves");
}

fn each_request_gets_an_access_line_from_the_worker_that_served_it(flavour: Flavour) {
    let server = flavour.server("access_log = true", 1);
    let pid = server.get("/pid").body.trim().to_string();
    let reply = parse_reply(&send_raw(
        server.port,
        b"GET /health?probe=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: tester/1 \"quoted\"\r\n\
          Referer: http://r.test/\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(reply.status, 200);
    let line = server.wait_for_log("\"GET /health?probe=1 HTTP/1.1\" 200 ");
    let bytes = reply.body.len();
    assert!(
        line.starts_with("127.0.0.1 - - ["),
        "the combined log format, as it is: {line}"
    );
    assert!(
        line.contains(&format!(
            "\" 200 {bytes} \"http://r.test/\" \"tester/1 \\x22quoted\\x22\" "
        )),
        "{line}"
    );
    assert!(line.ends_with(&format!(" http-0 pid={pid}")), "{line}");
    // A request that cannot be read is logged too, with its status.
    let reply = parse_reply(&send_raw(server.port, b"THIS IS NOT HTTP\r\n\r\n"));
    assert_eq!(reply.status, 400);
    server.wait_for_log("\"-\" 400 ");
    // HEAD sends no body: 0 bytes.
    let reply = parse_reply(&send_raw(
        server.port,
        b"HEAD /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(reply.status, 200);
    server.wait_for_log("\"HEAD /health HTTP/1.1\" 200 0 ");
}

fn access_lines_are_json_objects_with_log_format_json(flavour: Flavour) {
    let server = flavour.server("access_log = true\nlog_format = \"json\"", 1);
    assert_eq!(server.get("/health?x=%20").status, 200);
    let line = server.wait_for_log("\"event\":\"access\"");
    for field in [
        "\"method\":\"GET\"",
        "\"path\":\"/health\"",
        "\"query\":\"x=%20\"",
        "\"status\":200",
        "\"worker\":\"http-0\"",
        "\"remote_addr\":\"127.0.0.1\"",
        "\"duration_us\":",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
}

#[test]
fn the_demo_app_refuses_methods_it_does_not_serve() {
    let server = Server::start("workers = 1");
    let reply = parse_reply(&send_raw(
        server.port,
        b"DELETE / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(reply.status, 405, "{reply:?}");
}

#[test]
fn fault_endpoints_answer_only_when_enabled() {
    let server = Server::start("workers = 1\ndemo_fault_endpoints = false");
    let reply = server.get("/crash");
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("demo_fault_endpoints"), "{reply:?}");
    assert_eq!(server.get("/health").status, 200);
}

fn keep_alive_connections_serve_several_requests(flavour: Flavour) {
    let server = flavour.server("", 1);
    let mut connection = KeepAlive::connect(server.port);
    let first = connection.get("/pid");
    let second = connection.get("/pid");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body, second.body);
    assert!(!first.head.contains("Connection: close"), "{}", first.head);
    assert!(first.head.starts_with("HTTP/1.1 200"), "{}", first.head);
}

fn pipelined_requests_are_answered_in_order(flavour: Flavour) {
    let server = flavour.server("", 1);
    let mut stream = connect(server.port);
    // Three requests in one write; the last has a body.
    stream
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /pid HTTP/1.1\r\nHost: h\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nthird",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let replies: Vec<Reply> = (0..3)
        .map(|_| read_response(&mut reader).expect("a whole response"))
        .collect();
    assert_eq!(replies[0].body, "ok\n");
    assert!(
        replies[1].body.trim().parse::<u32>().is_ok(),
        "{:?}",
        replies[1]
    );
    assert_eq!(replies[2].body, "third");
    assert!(replies.iter().all(|reply| reply.status == 200));
}

fn a_client_with_requests_queued_does_not_hold_the_worker_from_others(flavour: Flavour) {
    // One worker. Client A pipelines 40 requests of 25 ms (1 s of work); once its first
    // answer is in, client B asks once. B takes its turn behind what was already queued, not
    // behind A's whole burst (A's next request was always there when its answer left: the
    // worker once served it again and again, and B waited seconds under load).
    const BURST: usize = 40;
    let server = flavour.server("", 1);
    let mut a = connect(server.port);
    a.set_read_timeout(Some(SOON * 4)).unwrap();
    a.write_all(
        "GET /sleep?ms=25 HTTP/1.1\r\nHost: h\r\n\r\n"
            .repeat(BURST)
            .as_bytes(),
    )
    .unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(a);
        let mut answered = Vec::new();
        for _ in 0..BURST {
            let reply = read_response(&mut reader).expect("each of A's answers");
            assert_eq!(reply.status, 200, "{reply:?}");
            answered.push(std::time::Instant::now());
            let _ = first_tx.send(());
        }
        answered
    });
    first_rx.recv_timeout(SOON).expect("A's first answer");
    let b = server.get("/health");
    let b_answered = std::time::Instant::now();
    assert_eq!((b.status, b.body.as_str()), (200, "ok\n"));
    let a_answered = reader.join().expect("A's reader");
    let after_b = a_answered.iter().filter(|at| **at > b_answered).count();
    assert!(
        after_b >= BURST / 2,
        "only {after_b} of A's {BURST} answers came after B's: B waited behind A's burst"
    );
}

fn expect_100_continue_is_answered_before_the_body_is_sent(flavour: Flavour) {
    let server = flavour.server("", 1);
    let mut stream = connect(server.port);
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .unwrap();
    // The client waits for the interim response before it sends the body (curl waits 1 s
    // for it otherwise).
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    reader.read_line(&mut line).unwrap();
    stream.write_all(b"body").unwrap();
    let reply = read_response(&mut reader).expect("a whole response");
    assert_eq!((reply.status, reply.body.as_str()), (200, "body"));
}

fn chunked_and_sized_bodies_reach_the_application_whole(flavour: Flavour) {
    let server = flavour.server("", 1);
    let chunked = send_raw(
        server.port,
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n",
    );
    let reply = parse_reply(&chunked);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello, world"),
        "{chunked}"
    );
    let large = "x".repeat(200_000);
    let sized = send_raw(
        server.port,
        format!(
            "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{large}",
            large.len()
        )
        .as_bytes(),
    );
    let reply = parse_reply(&sized);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), large.len(), "a whole 200 kB body back");
    // Past what a worker keeps in memory (1 MiB), chunked: it goes through a temporary file
    // and comes back whole, in order.
    let pattern: String = (0..3 * 1024 * 1024 / 8)
        .map(|index| format!("{:07x}\n", index % 0xfff_ffff))
        .collect();
    let mut request =
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for piece in pattern.as_bytes().chunks(100_000) {
        request.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend(piece);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    let reply = parse_reply(&send_raw(server.port, &request));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), pattern.len(), "a whole 3 MiB body back");
    assert!(reply.body == pattern, "the 3 MiB body back as sent");
}

fn head_gets_the_head_of_get(flavour: Flavour) {
    let server = flavour.server("", 1);
    let get = parse_reply(&send_raw(
        server.port,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ));
    let head = send_raw(
        server.port,
        b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    let reply = parse_reply(&head);
    assert_eq!(reply.status, 200);
    assert!(head.ends_with("\r\n\r\n"), "no body after a HEAD: {head:?}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", get.body.len())),
        "{head}"
    );
}

fn a_worker_is_recycled_after_limit_request_requests(flavour: Flavour) {
    let server = flavour.server("limit_request = 3", 1);
    let first = server.get("/pid").body;
    assert_eq!(server.get("/pid").body, first);
    let third = server.get("/pid");
    assert_eq!(third.body, first);
    assert!(third.head.contains("Connection: close"), "{}", third.head);
    server.wait_for_log_all(&[
        "exited: limit_request reached",
        "3 requests served; respawned as pid",
    ]);
    let fourth = server.get("/pid").body;
    assert_ne!(fourth, first, "a new worker serves the fourth request");
}

fn a_worker_serves_exactly_limit_request_requests_among_many_connections(flavour: Flavour) {
    // Before: a worker holding several connections served one more request than
    // limit_request now and then (one it had begun to read when it reached the limit).
    let server = flavour.server("limit_request = 5", 1);
    let served: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let mut connection = KeepAlive::retrying(server.port);
                    (0..30)
                        .map(|_| connection.get("/pid"))
                        .filter(|reply| reply.status == 200)
                        .map(|reply| reply.body)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|client| client.join().expect("client"))
            .collect()
    });
    assert_eq!(served.len(), 90, "every request answered");
    let mut by_worker = std::collections::BTreeMap::new();
    for pid in &served {
        *by_worker.entry(pid.clone()).or_insert(0) += 1;
    }
    assert!(by_worker.values().all(|count| *count <= 5), "{by_worker:?}");
    // Each worker that left had served exactly five.
    for line in server.log_matching("exited: limit_request reached") {
        assert!(line.contains(", 5 requests served"), "{line}");
    }
}

fn no_fast_request_waits_behind_a_slow_one_while_a_worker_could_serve_it(flavour: Flavour) {
    // Before: a kept-alive connection whose worker entered a slow request waited for all of
    // it (here 1 s) while two other workers served fast requests, never idle for long
    // enough to be handed it.
    let server = flavour.server("", 4);
    let slow_left = std::sync::atomic::AtomicUsize::new(2);
    let (fast, slow) = std::thread::scope(|scope| {
        let slow: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut connection = KeepAlive::retrying(server.port);
                    let statuses: Vec<u16> = (0..3)
                        .map(|_| connection.get("/sleep?ms=1000").status)
                        .collect();
                    slow_left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    statuses
                })
            })
            .collect();
        let fast: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    let mut connection = KeepAlive::retrying(server.port);
                    let mut waits = Vec::new();
                    // Bounded: until the slow clients are done, and 10,000 requests at most.
                    while slow_left.load(std::sync::atomic::Ordering::SeqCst) > 0
                        && waits.len() < 10_000
                    {
                        let started = std::time::Instant::now();
                        let reply = connection.get("/");
                        waits.push((reply.status, started.elapsed()));
                    }
                    waits
                })
            })
            .collect();
        let fast: Vec<(u16, std::time::Duration)> = fast
            .into_iter()
            .flat_map(|client| client.join().expect("fast client"))
            .collect();
        let slow: Vec<u16> = slow
            .into_iter()
            .flat_map(|client| client.join().expect("slow client"))
            .collect();
        (fast, slow)
    });
    assert_eq!(slow, [200; 6], "the slow requests were answered");
    assert!(fast.iter().all(|(status, _)| *status == 200), "{fast:?}");
    let longest = fast.iter().map(|(_, wait)| *wait).max().unwrap_or_default();
    eprintln!(
        "{} fast requests, the longest waited {longest:?}",
        fast.len()
    );
    assert!(
        longest < std::time::Duration::from_millis(500),
        "a fast request waited {longest:?} ({} fast requests)",
        fast.len()
    );
}

fn keep_alive_load(
    port: u16,
    clients: usize,
    requests: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<u16> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut connection = KeepAlive::connect(port);
                    let mut statuses = Vec::new();
                    while statuses.len() < requests
                        && !stop.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        statuses.push(connection.get("/").status);
                    }
                    statuses
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect()
    })
}

fn more_keep_alive_clients_than_workers_all_get_answers(flavour: Flavour) {
    let server = flavour.server("", 1);
    let never = std::sync::atomic::AtomicBool::new(false);
    let statuses = keep_alive_load(server.port, 4, 300, &never);
    assert_eq!(statuses.len(), 1200);
    let failed = statuses.iter().filter(|status| **status != 200).count();
    assert_eq!(failed, 0, "requests lost on kept-alive connections");
}

fn reloads_and_scaling_under_keep_alive_load_lose_no_request(flavour: Flavour) {
    use nix::sys::signal::Signal;
    let server = flavour.server("", 2);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let statuses = std::thread::scope(|scope| {
        let load = scope.spawn(|| keep_alive_load(server.port, 4, 100_000, &stop));
        for round in 1..=3 {
            for signal in [Signal::SIGHUP, Signal::SIGTTIN, Signal::SIGTTOU] {
                server.signal(signal);
            }
            server.wait_for_log(&format!("starting generation {}", round + 1));
            server.wait_for_log_count("stopped (replaced after reload)", 2 * round);
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap()
    });
    assert!(
        statuses.len() > 100,
        "the load ran: {} requests",
        statuses.len()
    );
    let failed = statuses.iter().filter(|status| **status != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests lost", statuses.len());
    assert_eq!(
        server.log_matching("stopped (replaced after reload)").len(),
        6
    );
}
