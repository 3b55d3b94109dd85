//! The built-in demo application that the binary serves, the tests drive and the load and
//! fault-injection scripts use.
//!
//! `GET /`, `/health`, `/pid` always answer. The fault endpoints make a worker misbehave on
//! purpose and answer only with `demo_fault_endpoints = true`:
//! `/sleep?ms=N` (wall-clock time), `/burn?ms=N` (busy CPU), `/alloc?mb=N` (allocate, touch
//! and keep N MiB: a leak), `/crash` (abort) and `/crash?exit=N` (exit with status N).

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::app::{App, Request, RequestBody, Response, WorkerInfo};

/// Longest `/sleep` or `/burn` accepted, so a typo cannot park a worker for days.
const MAX_FAULT_MS: u64 = 3_600_000;

pub struct DemoApp {
    faults_enabled: bool,
    /// Memory kept by `/alloc`: the simulated leak.
    leaked: Vec<Vec<u8>>,
    /// The address space RLIMIT_AS gives this worker (`limit_memory_hard`), if it caps it.
    address_space_cap: Option<u64>,
    /// `http worker 2`, for log lines.
    name: String,
}

/// The [`crate::AppFactory`] of the demo app.
pub fn factory(worker: &WorkerInfo<'_>) -> anyhow::Result<Box<dyn App>> {
    if worker.config.demo_crash_at_boot {
        bail!("demo_crash_at_boot = true: failing on purpose during boot");
    }
    std::thread::sleep(worker.config.demo_boot_delay.duration());
    let config = worker.config;
    Ok(Box::new(DemoApp {
        faults_enabled: config.demo_fault_endpoints,
        leaked: Vec::new(),
        address_space_cap: Some(config.limit_memory_hard.bytes())
            .filter(|cap| *cap > 0 && config.limit_memory_hard_rlimit),
        name: format!("http worker {}", worker.slot),
    }))
}

impl App for DemoApp {
    fn handle(&mut self, request: &Request) -> Response {
        if request.path() == "/echo" {
            let response = match request.body() {
                RequestBody::Memory(bytes) => Response::new(200, bytes.clone()),
                // A large body, from its temporary file, by sendfile.
                RequestBody::File { file, len } => match file.try_clone() {
                    Ok(file) => Response::file(200, file, 0, *len),
                    Err(error) => Response::text(500, format!("cannot read the body: {error}\n")),
                },
            };
            return response.header("Content-Type", "application/octet-stream");
        }
        if !matches!(request.method(), "GET" | "HEAD") {
            return Response::text(405, "method not allowed: use GET or HEAD\n")
                .header("Allow", "GET, HEAD");
        }
        match request.path() {
            "/" => Response::text(200, "Hello from forkwarden\n"),
            "/health" => Response::text(200, "ok\n"),
            "/pid" => Response::text(200, format!("{}\n", std::process::id())),
            "/sleep" | "/burn" | "/alloc" | "/crash" if !self.faults_enabled => Response::text(
                404,
                "fault endpoints are disabled (set demo_fault_endpoints = true)\n",
            ),
            "/sleep" => self.sleep(request),
            "/burn" => self.burn(request),
            "/alloc" => self.alloc(request),
            "/crash" => crash(request),
            _ => Response::text(404, format!("no such path: {}\n", request.path())),
        }
    }
}

impl DemoApp {
    fn sleep(&self, request: &Request) -> Response {
        match number(request, "ms", MAX_FAULT_MS) {
            Ok(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Response::text(200, format!("slept {ms} ms\n"))
            }
            Err(response) => response,
        }
    }

    fn burn(&self, request: &Request) -> Response {
        match number(request, "ms", MAX_FAULT_MS) {
            Ok(ms) => {
                let until = Instant::now() + Duration::from_millis(ms);
                let mut spins: u64 = 0;
                while Instant::now() < until {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                Response::text(200, format!("burned {ms} ms of CPU\n"))
            }
            Err(response) => response,
        }
    }

    fn alloc(&mut self, request: &Request) -> Response {
        match number(request, "mb", 1 << 20) {
            Ok(mb) => {
                let Ok(bytes) = usize::try_from(mb << 20) else {
                    return Response::text(400, "mb is too large\n");
                };
                let mut block: Vec<u8> = Vec::new();
                if block.try_reserve_exact(bytes).is_err() {
                    return self.allocation_refused(mb);
                }
                // Touch every page so the memory is resident, as a real leak would be.
                block.resize(bytes, 1);
                self.leaked.push(block);
                let total: usize = self.leaked.iter().map(Vec::len).sum();
                Response::text(
                    200,
                    format!("allocated {mb} MiB; holding {} MiB\n", total >> 20),
                )
            }
            Err(response) => response,
        }
    }
}

impl DemoApp {
    /// An allocation failed: most likely RLIMIT_AS, which `limit_memory_hard` sets. Says so,
    /// and has this worker replaced: it is at its limit.
    fn allocation_refused(&self, mb: u64) -> Response {
        let pid = std::process::id();
        match self.address_space_cap {
            Some(cap) => tracing::warn!(
                pid,
                limit = "limit_memory_hard",
                requested_mib = mb,
                "{} (pid {pid}): an allocation of {mb} MiB was refused: limit_memory_hard caps \
                 its address space at {} (RLIMIT_AS); it is replaced after this response",
                self.name,
                crate::format::mib(cap)
            ),
            None => tracing::warn!(
                pid,
                requested_mib = mb,
                "{} (pid {pid}): an allocation of {mb} MiB was refused: the system is out of \
                 memory; it is replaced after this response",
                self.name
            ),
        }
        Response::text(500, format!("could not allocate {mb} MiB\n")).and_replace_worker()
    }
}

fn crash(request: &Request) -> Response {
    match request.query_param("exit").map(str::parse::<i32>) {
        None => std::process::abort(),
        Some(Ok(status)) => std::process::exit(status),
        Some(Err(_)) => Response::text(400, "exit must be an integer status\n"),
    }
}

/// Query parameter `name` as a number from 0 to `max`, or the 400 response to send.
fn number(request: &Request, name: &str, max: u64) -> Result<u64, Response> {
    request
        .query_param(name)
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|value| *value <= max)
        .ok_or_else(|| {
            Response::text(
                400,
                format!(
                    "{} needs ?{name}=N with N from 0 to {max}\n",
                    request.path()
                ),
            )
        })
}
