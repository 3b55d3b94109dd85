//! A short chaos run: keep-alive load while workers are killed at random. Every failed
//! request must be explained by a kill, and the server must come out of it whole: full
//! pool, no zombie, no leaked descriptor. The scripts (`scripts/chaos.sh`) run the long
//! version with more faults.
//!
//! What is guaranteed, and so asserted: a kill costs at most one request, to a client that
//! retries as HTTP requires. A worker serves one request at a time but holds several
//! connections (those whose requests are still arriving, and kept-alive idle ones): its
//! death fails the request in flight, and resets the others. A request sent on a reset idle
//! connection fails before any byte of response, which RFC 9112 (9.3.1) has clients retry
//! (browsers and nginx do, for idempotent requests): the test's clients do the same, and
//! the retries are counted, not hidden. Connections still in the listen queue or the
//! hand-off channel are untouched, and the replacement starts at once: a worker that was
//! ready and is killed from outside is never a failed start, so no slot sits in backoff
//! while clients wait.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{KeepAlive, SOON, Server, children_of, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const WORKERS: usize = 4;
const CLIENTS: usize = 6;
const CHAOS_FOR: Duration = Duration::from_secs(12);
const KILL_EVERY: Duration = Duration::from_millis(400);

fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn zombies_of(pid: i32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
                let state = fields.next();
                let parent = fields.next().and_then(|ppid| ppid.parse::<i32>().ok());
                state == Some("Z") && parent == Some(pid)
            })
        })
        .count()
}

#[test]
fn random_worker_kills_under_load_cost_at_most_one_request_each() {
    let server = Server::start(&format!("workers = {WORKERS}"));
    server.wait_for_workers("http worker", WORKERS);
    // Warm up, so that descriptors opened once (per-worker /proc handles) are counted.
    assert_eq!(server.get("/health").status, 200);
    let descriptors_before = open_descriptors(server.pid());

    let stop = AtomicBool::new(false);
    let (succeeded, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let retried = AtomicU64::new(0);
    let mut kills = 0u64;
    std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                let mut connection = KeepAlive::retrying(server.port);
                while !stop.load(Ordering::SeqCst) {
                    match connection.get("/").status {
                        200 => succeeded.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
                retried.fetch_add(connection.retried, Ordering::SeqCst);
            });
        }
        let until = Instant::now() + CHAOS_FOR;
        let mut turn = 0usize;
        while Instant::now() < until {
            std::thread::sleep(KILL_EVERY); // the chaos cadence itself, not a wait for a state
            let workers = server.workers("http worker");
            if let Some(victim) = workers.get(turn % workers.len().max(1)) {
                if kill(Pid::from_raw(*victim), Signal::SIGKILL).is_ok() {
                    kills += 1;
                }
            }
            turn += 7; // a stride co-prime with the pool size: every slot gets its turn
        }
        stop.store(true, Ordering::SeqCst);
    });

    let (succeeded, failed, retried) = (
        succeeded.into_inner(),
        failed.into_inner(),
        retried.into_inner(),
    );
    eprintln!(
        "chaos: {kills} kills, {succeeded} requests succeeded, {failed} failed, {retried} \
         retried on a new connection after their kept-alive one was reset"
    );
    assert!(kills >= 20, "only {kills} kills");
    assert!(
        succeeded > 1000,
        "the load ran: {succeeded} requests succeeded"
    );
    assert!(
        failed <= kills,
        "{failed} failed requests for {kills} kills"
    );
    // A kill resets at most the connections its worker held: at most every client's.
    assert!(
        retried <= kills * CLIENTS as u64,
        "{retried} retries for {kills} kills of workers holding at most {CLIENTS} connections"
    );
    server.wait_for_workers("http worker", WORKERS);
    assert!(
        wait_until(SOON, || zombies_of(server.pid()) == 0),
        "zombies left: {}",
        zombies_of(server.pid())
    );
    assert!(
        wait_until(SOON, || open_descriptors(server.pid())
            <= descriptors_before),
        "the master's descriptors grew from {descriptors_before} to {}",
        open_descriptors(server.pid())
    );
    assert_eq!(server.get("/health").status, 200);
    let respawns = server.log_matching("died: killed by SIGKILL").len() as u64;
    assert_eq!(respawns, kills, "every kill is logged once");
    assert!(children_of(server.pid()).len() >= WORKERS);
}
