//! What an HTTP worker needs to know of the config, typed. The master builds it from each
//! generation's config; a program running forkwarden's worker gets it in the kit as JSON
//! (see `kit` and docs/worker-kit.md), so that the worker never parses the supervisor's
//! config file, and the wheel does not carry its parser.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::WorkerLimits;
use crate::log::{LogFormat, LogSettings};

/// An HTTP worker's settings, from the config (None: off, no bound).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `http_socket_timeout`: how long a client may keep the worker waiting.
    pub socket_timeout: Option<Duration>,
    /// `http_request_timeout`: how long a whole request may take to arrive.
    pub request_timeout: Option<Duration>,
    /// `http_max_body_size`: the largest request body accepted, in bytes.
    pub max_body_size: Option<u64>,
    /// `proxy_mode`: trust `X-Forwarded-*` from the proxy in front.
    pub proxy_mode: bool,
    /// `access_log`: a line per request, in the log's format.
    pub access_log: bool,
    pub limits: WorkerLimits,
    pub log: LogSettings,
}

impl HttpSettings {
    /// Whether log lines (access lines included) are JSON.
    pub fn json_log(&self) -> bool {
        self.log.format == LogFormat::Json
    }

    /// The settings as the kit hands them over (fails on a log file path that is not
    /// UTF-8, which JSON cannot carry).
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// The settings a program was handed (see [`HttpSettings::to_json`]).
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }
}
