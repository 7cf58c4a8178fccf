//! A generic HTTP/JSON backend (`LOOKUP_BACKEND=http`): any directory with an HTTP
//! API, described in the configuration file per question (URL template, method,
//! headers, body, which statuses mean found, not found or refused, and where the
//! answer is in the JSON), with the failure rules of the userli backend: anything
//! unexpected is an error (`TEMP`), never "not found".
//!
//! Also home of [`client`], the HTTP plumbing the userli backend shares.

pub mod client;
