//! HTTP workers: bad input gets a clear status and the worker lives on.

mod common;

use common::{KeepAlive, Server, parse_reply, send_raw};

#[test]
fn malformed_requests_get_400_and_the_worker_survives() {
    let server = Server::start("workers = 1");
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

#[test]
fn every_class_of_bad_request_gets_its_status() {
    let server = Server::start("workers = 1\nhttp_max_body_size = 16");
    let pid = server.get("/pid").body;
    let huge_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    let cases: [(&[u8], u16); 4] = [
        (huge_header.as_bytes(), 431),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n",
            413,
        ),
        (
            b"GET /no-such-path HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            404,
        ),
        (
            b"DELETE / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            405,
        ),
    ];
    for (request, status) in cases {
        let reply = parse_reply(&send_raw(server.port, request));
        assert_eq!(reply.status, status, "{reply:?}");
    }
    assert_eq!(server.get("/pid").body, pid, "the same worker still serves");
}

#[test]
fn fault_endpoints_answer_only_when_enabled() {
    let server = Server::start("workers = 1\ndemo_fault_endpoints = false");
    let reply = server.get("/crash");
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("demo_fault_endpoints"), "{reply:?}");
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn keep_alive_connections_serve_several_requests() {
    let server = Server::start("workers = 1");
    let mut connection = KeepAlive::connect(server.port);
    let first = connection.get("/pid");
    let second = connection.get("/pid");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body, second.body);
    assert!(first.head.contains("Date: "), "{}", first.head);
}

#[test]
fn a_worker_is_recycled_after_limit_request_requests() {
    let server = Server::start("workers = 1\nlimit_request = 3");
    let first = server.get("/pid").body;
    assert_eq!(server.get("/pid").body, first);
    let third = server.get("/pid");
    assert_eq!(third.body, first);
    server.wait_for_log_all(&[
        "exited: limit_request reached",
        "3 requests served; respawned as pid",
    ]);
    let fourth = server.get("/pid").body;
    assert_ne!(fourth, first, "a new worker serves the fourth request");
}

/// Runs `clients` keep-alive clients, each sending `/` until `requests` are done or `stop`
/// is set; returns every status they got (0: a request that got no response).
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

#[test]
fn more_keep_alive_clients_than_workers_all_get_answers() {
    let server = Server::start("workers = 1");
    let never = std::sync::atomic::AtomicBool::new(false);
    let statuses = keep_alive_load(server.port, 4, 300, &never);
    assert_eq!(statuses.len(), 1200);
    let failed = statuses.iter().filter(|status| **status != 200).count();
    assert_eq!(failed, 0, "requests lost on kept-alive connections");
}

#[test]
fn reloads_and_scaling_under_keep_alive_load_lose_no_request() {
    use nix::sys::signal::Signal;
    let server = Server::start("workers = 2");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let statuses = std::thread::scope(|scope| {
        let load = scope.spawn(|| keep_alive_load(server.port, 4, 100_000, &stop));
        for round in 1..=3 {
            for signal in [Signal::SIGHUP, Signal::SIGTTIN, Signal::SIGTTOU] {
                server.signal(signal);
            }
            server.wait_for_log(&format!("starting generation {}", round + 1));
            server.wait_for_workers("http worker", 2);
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
